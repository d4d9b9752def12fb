//! Command-line configuration. Every flag has a `GRU_*` environment twin and
//! a default; `gru-serve --help` is the reference the README quotes. Nothing
//! else in the program reads the environment (`GRU_AUTH_TOKENS` is read here
//! too, never shown by `--help`: it holds secrets).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

mod commands;
mod env;
pub mod units;

pub use commands::{Command, ExportArgs, HealthArgs};
use units::{listen_addr, parse_fraction, parse_listen};

use crate::engine::{EngineConfig, TrainingConfig};
pub use crate::server::telemetry::LogFormat;
use crate::server::telemetry::OtlpConfig;
use crate::server::{ServerConfig, TlsFiles};
use crate::service::auth::Auth;

/// gru-serve: a gRPC server for GRU recurrent models, with server-side session state.
///
/// Every flag has a `GRU_*` environment twin (shown as [env: …]). Sizes take
/// units (`64MiB`, `1GiB`; a bare number is bytes), durations too (`30s`,
/// `500ms`, `10m`; a bare number is seconds).
#[derive(Debug, Clone, Parser)]
#[command(name = "gru-serve", version, about, args_override_self = true)]
pub struct Args {
    /// Without a subcommand: serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    // ---- Network
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "GRU_LISTEN",
        default_value = "0.0.0.0:50051",
        help_heading = "Network"
    )]
    pub listen: SocketAddr,

    /// Address of the HTTP port: Prometheus /metrics and the health checks
    /// /livez, /readyz, /readyz/models/NAME; "off" disables it.
    #[arg(long, env = "GRU_METRICS_LISTEN", default_value = "0.0.0.0:9090", value_parser = parse_listen, help_heading = "Network")]
    pub metrics_listen: String,

    /// Address of the KServe v2 / Triton HTTP/JSON port (/v2/...; Triton's
    /// 8000); "off" disables it. A taken port is logged, not fatal.
    #[arg(long, env = "GRU_HTTP_LISTEN", default_value = "0.0.0.0:8000", value_parser = parse_listen, help_heading = "Network")]
    pub http_listen: String,

    /// A second gRPC address serving the same services, e.g. 0.0.0.0:8001
    /// so Triton examples work unchanged; "off" = only --listen.
    #[arg(long, env = "GRU_TRITON_GRPC_LISTEN", default_value = "off", value_parser = parse_listen, help_heading = "Network")]
    pub triton_grpc_listen: String,

    /// Largest gRPC message, either direction (tonic's default is 4MiB).
    #[arg(long, env = "GRU_MAX_MESSAGE_BYTES", default_value = "64MiB", value_name = "SIZE", value_parser = units::parse_bytes_usize, help_heading = "Network")]
    pub max_message_bytes: usize,

    /// Most concurrently open StepStream streams.
    #[arg(
        long,
        env = "GRU_MAX_STREAMS",
        default_value_t = 4096,
        help_heading = "Network"
    )]
    pub max_streams: usize,

    /// A StepStream quiet this long is ended (sessions stay).
    #[arg(long, env = "GRU_STREAM_IDLE_TIMEOUT", alias = "stream-idle-timeout-secs", default_value = "5m", value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Network")]
    pub stream_idle_timeout: Duration,

    /// Deadline of a unary RPC (and of a stream's opening); 0 = none.
    #[arg(long, env = "GRU_REQUEST_TIMEOUT", alias = "request-timeout-secs", default_value = "2m", value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Network")]
    pub request_timeout: Duration,

    /// Requests (HTTP/2 streams) one connection may have open at once.
    #[arg(
        long,
        env = "GRU_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1024,
        help_heading = "Network"
    )]
    pub max_streams_per_connection: u32,

    /// Interval of HTTP/2 keepalive pings (0 = none); a ping unanswered
    /// for --http2-keepalive-timeout closes the connection.
    #[arg(long, env = "GRU_HTTP2_KEEPALIVE", alias = "http2-keepalive-secs", default_value = "30s", value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Network")]
    pub http2_keepalive: Duration,

    /// How long to wait for a keepalive ping's acknowledgement.
    #[arg(long, env = "GRU_HTTP2_KEEPALIVE_TIMEOUT", alias = "http2-keepalive-timeout-secs", default_value = "10s", value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Network")]
    pub http2_keepalive_timeout: Duration,

    /// Threads for the async runtime (network I/O). Compute runs elsewhere.
    #[arg(
        long,
        env = "GRU_RUNTIME_THREADS",
        default_value_t = 1,
        help_heading = "Network"
    )]
    pub runtime_threads: usize,

    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "GRU_DRAIN_TIMEOUT", alias = "drain-timeout-secs", default_value = "10s", value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Network")]
    pub drain_timeout: Duration,

    // ---- Models
    /// Model repository: <dir>/<name>/<version>/ holding a native model,
    /// pytorch.safetensors or model.onnx.
    #[arg(
        long,
        env = "GRU_MODEL_DIR",
        default_value = "models",
        help_heading = "Models"
    )]
    pub model_dir: PathBuf,

    /// Interval of scans of the model repository for new version folders
    /// (0 = load only at start). Trained versions appear at once either way.
    #[arg(long, env = "GRU_MODEL_POLL", alias = "model-poll-secs", default_value = "10s", value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Models")]
    pub model_poll: Duration,

    /// Compute device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(
        long,
        env = "GRU_DEVICE",
        default_value = "cpu",
        help_heading = "Models"
    )]
    pub device: String,

    /// Threads one model's compute may use: a large batched step (over 32 M
    /// multiply-adds, e.g. 128 sessions x 32 steps at H = 256) is split by
    /// rows over this many threads. With one step per message the second
    /// thread only competes with the network threads (BENCHMARKS.md), hence 1.
    #[arg(
        long,
        env = "GRU_COMPUTE_THREADS",
        default_value_t = 1,
        help_heading = "Models"
    )]
    pub compute_threads: usize,

    // ---- Sessions
    /// Most live sessions; opening past it gets RESOURCE_EXHAUSTED (never an eviction).
    #[arg(
        long,
        env = "GRU_MAX_SESSIONS",
        default_value_t = 100_000,
        help_heading = "Sessions"
    )]
    pub max_sessions: usize,

    /// Idle time after which a session expires.
    #[arg(long, env = "GRU_SESSION_TTL", alias = "session-ttl-secs", default_value = "10m", value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Sessions")]
    pub session_ttl: Duration,

    /// Most memory of last replies all sessions together keep to answer a
    /// retried step message exactly once. Past it a reply is not kept, and a
    /// retry of that message is FAILED_PRECONDITION (its state is readable
    /// with GetSessionState).
    #[arg(long, env = "GRU_MAX_RETAINED_REPLY_BYTES", default_value = "1GiB", value_name = "SIZE", value_parser = units::parse_bytes, help_heading = "Sessions")]
    pub max_retained_reply_bytes: u64,

    /// Where sessions outlive this process. `file[:DIR]` (the default):
    /// checkpoint files, restored at start, for one server (DIR defaults to
    /// `--state-dir`/sessions, else the model directory's `.sessions`).
    /// `redis://HOST:PORT[/DB]` (`rediss://` for TLS): shared by replicas,
    /// which take sessions over from each other. `memory`: sessions die
    /// with the process.
    // Parsed in `server_config`, not by clap: clap's error would echo the
    // value, and a Redis URL may carry a password.
    #[arg(
        long,
        env = "GRU_SESSION_STORE",
        default_value = "file",
        value_name = "STORE",
        help_heading = "Sessions"
    )]
    pub session_store: String,

    /// How often the sessions changed since the last checkpoint are written
    /// to the session store. A crash loses at most this much of each
    /// session's progress (the client replays it).
    #[arg(long, env = "GRU_CHECKPOINT_INTERVAL", default_value = "1s", value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Sessions")]
    pub checkpoint_interval: Duration,

    /// A writable folder for the server's own state (the file session
    /// store's checkpoints go in its `sessions` folder); default: inside
    /// the model directory.
    #[arg(
        long,
        env = "GRU_STATE_DIR",
        value_name = "DIR",
        help_heading = "Sessions"
    )]
    pub state_dir: Option<PathBuf>,

    // ---- Batching and request limits
    /// Most sessions one batched step gathers.
    #[arg(
        long,
        env = "GRU_MAX_BATCH",
        default_value_t = 256,
        help_heading = "Batching and limits"
    )]
    pub max_batch: usize,

    /// How long a lightly loaded compute worker stays awake for the next
    /// step before it sleeps (0 = never): a lone session's steps then skip
    /// a thread wake-up (tens of µs). Used only while steps come that
    /// fast; it costs CPU time then (mind CPU quotas).
    #[arg(long, env = "GRU_WORKER_SPIN", default_value = "200us", value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Batching and limits")]
    pub worker_spin: Duration,

    /// Pending step requests per model version before RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "GRU_QUEUE_CAPACITY",
        default_value_t = 4096,
        help_heading = "Batching and limits"
    )]
    pub queue_capacity: usize,

    /// Most rows (steps) in one step message.
    #[arg(
        long,
        env = "GRU_MAX_STEPS_PER_MESSAGE",
        default_value_t = 4096,
        help_heading = "Batching and limits"
    )]
    pub max_steps_per_message: usize,

    /// Most sequences in one Predict request.
    #[arg(
        long,
        env = "GRU_MAX_PREDICT_SEQUENCES",
        default_value_t = 4096,
        help_heading = "Batching and limits"
    )]
    pub max_predict_sequences: usize,

    /// Most total steps in one Predict request.
    #[arg(long, env = "GRU_MAX_PREDICT_STEPS", default_value_t = 1 << 22, help_heading = "Batching and limits")]
    pub max_predict_steps: usize,

    /// Most memory one Predict may hold: its inputs and outputs, states and
    /// one forward call's working set (sequences are grouped by length and
    /// run in windows, never padded to the longest). Past it:
    /// RESOURCE_EXHAUSTED naming the need.
    #[arg(long, env = "GRU_MAX_PREDICT_BYTES", default_value = "1GiB", value_name = "SIZE", value_parser = units::parse_bytes, help_heading = "Batching and limits")]
    pub max_predict_bytes: u64,

    // ---- Training
    /// Training jobs that run at once; more wait in a queue.
    #[arg(
        long,
        env = "GRU_TRAINING_JOBS",
        default_value_t = 1,
        help_heading = "Training"
    )]
    pub training_jobs: usize,

    /// Compute threads of each running training job (apart from the serving workers).
    #[arg(
        long,
        env = "GRU_TRAINING_THREADS",
        default_value_t = 1,
        help_heading = "Training"
    )]
    pub training_threads: usize,

    /// Training jobs that may wait; past it StartTraining is RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "GRU_TRAINING_QUEUE",
        default_value_t = 16,
        help_heading = "Training"
    )]
    pub training_queue: usize,

    /// Largest training dataset (4 bytes per value).
    #[arg(long, env = "GRU_MAX_DATASET_BYTES", default_value = "1GiB", value_name = "SIZE", value_parser = units::parse_bytes, help_heading = "Training")]
    pub max_dataset_bytes: u64,

    /// Longest training sequence, in steps.
    #[arg(
        long,
        env = "GRU_MAX_TRAIN_SEQUENCE_LEN",
        default_value_t = 100_000,
        help_heading = "Training"
    )]
    pub max_train_sequence_len: usize,

    /// Largest model (parameters) a training job may create.
    #[arg(
        long,
        env = "GRU_MAX_MODEL_PARAMETERS",
        default_value_t = 50_000_000,
        help_heading = "Training"
    )]
    pub max_model_parameters: usize,

    /// Most memory one training mini-batch may need (batch_size sequences
    /// padded to the longest, with the BPTT cache); past it StartTraining
    /// is RESOURCE_EXHAUSTED.
    #[arg(long, env = "GRU_MAX_TRAINING_BATCH_BYTES", default_value = "2GiB", value_name = "SIZE", value_parser = units::parse_bytes, help_heading = "Training")]
    pub max_training_batch_bytes: u64,

    /// OS niceness of training threads (Linux), so serving keeps the CPU it needs.
    #[arg(
        long,
        env = "GRU_TRAINING_NICE",
        default_value_t = 10,
        help_heading = "Training"
    )]
    pub training_nice: i32,

    // ---- Security
    /// TLS certificate chain (PEM) for the gRPC port; with --tls-key turns TLS on.
    #[arg(
        long,
        env = "GRU_TLS_CERT",
        requires = "tls_key",
        help_heading = "Security"
    )]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(
        long,
        env = "GRU_TLS_KEY",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_key: Option<PathBuf>,

    /// CA (PEM) that client certificates must chain to; set = mutual TLS required.
    #[arg(
        long,
        env = "GRU_TLS_CLIENT_CA",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Bearer tokens, one `NAME TOKEN [admin]` per line; set = authentication
    /// on (also GRU_AUTH_TOKENS, `;`-separated). Training needs an admin token.
    #[arg(long, env = "GRU_AUTH_TOKENS_FILE", help_heading = "Security")]
    pub auth_tokens_file: Option<PathBuf>,

    // ---- Observability
    /// Log format.
    #[arg(
        long,
        env = "GRU_LOG_FORMAT",
        value_enum,
        default_value = "text",
        help_heading = "Observability"
    )]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(
        long,
        env = "GRU_LOG",
        default_value = "info",
        help_heading = "Observability"
    )]
    pub log: String,

    /// OpenTelemetry collector to export traces to over OTLP/gRPC, e.g.
    /// http://otel-collector:4317 (unset = no export). Each RPC is a span,
    /// child of the caller's W3C `traceparent`.
    #[arg(long, env = "GRU_OTLP_ENDPOINT", help_heading = "Observability")]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of the exported spans.
    #[arg(
        long,
        env = "GRU_OTLP_SERVICE_NAME",
        default_value = "gru-serve",
        help_heading = "Observability"
    )]
    pub otlp_service_name: String,

    /// Fraction of new traces exported, 0 to 1; a caller's traceparent
    /// sampled flag decides for its own traces.
    #[arg(long, env = "GRU_OTLP_SAMPLE_RATIO", default_value_t = 1.0, value_parser = parse_fraction, help_heading = "Observability")]
    pub otlp_sample_ratio: f64,

    /// One log line per RPC (target gru_serve::access): method, code,
    /// duration, peer, model and session where known. Without it only
    /// failed RPCs are logged (at info, warn or error by code).
    #[arg(long, env = "GRU_ACCESS_LOG", help_heading = "Observability")]
    pub access_log: bool,

    /// Time between SIGTERM and closing the gRPC port: /readyz answers 503
    /// and grpc health NOT_SERVING at once, requests are still served, so
    /// load balancers stop routing first (0 = close at once).
    #[arg(long, env = "GRU_SHUTDOWN_DELAY", default_value = "0s", value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Network")]
    pub shutdown_delay: Duration,
}

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`, opened.
pub fn open_device(spec: &str) -> Result<candle_core::Device, String> {
    let ordinal = match spec {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => 0,
        s => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => return Err(format!("--device '{spec}': expected cpu, cuda or cuda:N")),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(format!(
            "--device {spec}: this build has no CUDA support; rebuild with `--features cuda` (or use --device cpu)"
        ));
    }
    candle_core::Device::new_cuda(ordinal).map_err(|e| format!("--device {spec}: {e}"))
}

impl Args {
    fn metrics_addr(&self) -> Option<SocketAddr> {
        match self.metrics_listen.as_str() {
            "off" => None,
            a => a.parse().ok(),
        }
    }

    /// Trace export settings, when `--otlp-endpoint` is set.
    pub fn otlp(&self) -> Option<OtlpConfig> {
        self.otlp_endpoint.as_ref().map(|endpoint| OtlpConfig {
            endpoint: endpoint.clone(),
            service_name: self.otlp_service_name.clone(),
            sample_ratio: self.otlp_sample_ratio,
        })
    }

    /// The server's settings; fails (naming the flag) when a device cannot be opened.
    pub fn server_config(&self) -> Result<ServerConfig, String> {
        Ok(ServerConfig {
            engine: EngineConfig {
                model_dir: self.model_dir.clone(),
                device: open_device(&self.device)?,
                model_poll: self.model_poll,
                max_sessions: self.max_sessions,
                session_ttl: self.session_ttl,
                max_batch: self.max_batch,
                worker_spin: self.worker_spin,
                queue_capacity: self.queue_capacity,
                max_steps_per_message: self.max_steps_per_message,
                max_predict_sequences: self.max_predict_sequences,
                max_predict_steps: self.max_predict_steps,
                max_predict_bytes: self.max_predict_bytes,
                max_retained_reply_bytes: self.max_retained_reply_bytes,
                store: crate::engine::StoreConfig {
                    spec: self
                        .session_store
                        .parse()
                        .map_err(|e| format!("--session-store: {e}"))?,
                    checkpoint_interval: self.checkpoint_interval,
                    state_dir: self.state_dir.clone(),
                },
                training: TrainingConfig {
                    max_concurrent_jobs: self.training_jobs,
                    threads_per_job: self.training_threads,
                    max_queued_jobs: self.training_queue,
                    max_dataset_bytes: self.max_dataset_bytes,
                    max_sequence_len: self.max_train_sequence_len,
                    max_model_parameters: self.max_model_parameters,
                    max_batch_bytes: self.max_training_batch_bytes,
                    nice: self.training_nice,
                    ..TrainingConfig::default()
                },
            },
            max_message_bytes: self.max_message_bytes,
            max_streams: self.max_streams,
            drain_timeout: self.drain_timeout,
            metrics_listen: self.metrics_addr(),
            access_log: self.access_log,
            shutdown_delay: self.shutdown_delay,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
            auth: Auth::load(
                self.auth_tokens_file.as_deref(),
                std::env::var("GRU_AUTH_TOKENS").ok().as_deref(),
            )?,
            stream_idle_timeout: self.stream_idle_timeout.max(Duration::from_secs(1)),
            request_timeout: (!self.request_timeout.is_zero()).then_some(self.request_timeout),
            max_concurrent_streams_per_connection: self.max_streams_per_connection.max(1),
            http2_keepalive_interval: (!self.http2_keepalive.is_zero())
                .then_some(self.http2_keepalive),
            http2_keepalive_timeout: self.http2_keepalive_timeout,
            http_listen: listen_addr(&self.http_listen),
            triton_grpc_listen: listen_addr(&self.triton_grpc_listen),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c_args_otlp(flags: &[&str]) -> Option<OtlpConfig> {
        let mut argv = vec!["gru-serve"];
        argv.extend_from_slice(flags);
        Args::try_parse_from(argv).unwrap().otlp()
    }

    #[test]
    fn devices_parse_and_cuda_needs_the_feature() {
        assert!(matches!(open_device("cpu"), Ok(candle_core::Device::Cpu)));
        let bad = open_device("gpu").unwrap_err();
        assert!(bad.contains("expected cpu, cuda or cuda:N"), "{bad}");
        assert!(open_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        for spec in ["cuda", "cuda:1"] {
            let e = open_device(spec).unwrap_err();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }

    #[test]
    fn defaults_build_a_config_and_bad_flags_are_refused() {
        let args = Args::try_parse_from(["gru-serve"]).unwrap();
        let c = args.server_config().unwrap();
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(c.engine.training.max_concurrent_jobs, 1);
        let off = Args::try_parse_from(["gru-serve", "--metrics-listen", "off"]).unwrap();
        assert_eq!(off.server_config().unwrap().metrics_listen, None);
        assert!(Args::try_parse_from(["gru-serve", "--metrics-listen", "nine"]).is_err());
        assert_eq!(c_args_otlp(&[]), None);
        let o = c_args_otlp(&[
            "--otlp-endpoint",
            "http://c:4317",
            "--otlp-sample-ratio",
            "0.25",
        ])
        .unwrap();
        assert_eq!(
            (o.endpoint.as_str(), o.service_name.as_str(), o.sample_ratio),
            ("http://c:4317", "gru-serve", 0.25)
        );
        for bad in ["1.5", "-0.1", "half"] {
            assert!(Args::try_parse_from(["gru-serve", "--otlp-sample-ratio", bad]).is_err());
        }
    }

    #[test]
    fn durations_and_sizes_take_units_and_the_old_flag_names_still_parse() {
        let a = Args::try_parse_from([
            "gru-serve",
            "--session-ttl",
            "90s",
            "--max-predict-bytes",
            "64MiB",
            "--drain-timeout-secs",
            "7",
            "--request-timeout",
            "0",
        ])
        .unwrap();
        assert_eq!(a.session_ttl, Duration::from_secs(90));
        assert_eq!(a.max_predict_bytes, 64 << 20);
        assert_eq!(a.drain_timeout, Duration::from_secs(7));
        let c = a.server_config().unwrap();
        assert_eq!(c.request_timeout, None, "0 = no deadline, as before");
        let old = Args::try_parse_from(["gru-serve", "--session-ttl-secs", "600"]).unwrap();
        assert_eq!(old.session_ttl, Duration::from_secs(600));
        // A later flag wins over an earlier one (renamed variables go first).
        let both =
            Args::try_parse_from(["gru-serve", "--model-poll=5", "--model-poll", "1s"]).unwrap();
        assert_eq!(both.model_poll, Duration::from_secs(1));
    }
}
