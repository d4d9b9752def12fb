//! Flags of the subcommands besides serving (`health`, `export`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::units;

/// Subcommands besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Asks a running server's grpc.health.v1 service whether it is SERVING;
    /// exits 0 if so, 1 if not or unreachable (for Docker HEALTHCHECK and
    /// exec probes).
    Health(HealthArgs),
    /// Writes a model version of the repository as a PyTorch state dict
    /// (safetensors: `gru.weight_ih_l0` … for `nn.GRU(batch_first=True)`,
    /// `head.weight`/`head.bias` for `nn.Linear`) and prints its config as
    /// JSON. PyTorch's GRU is the after_matmul reset mode.
    Export(ExportArgs),
}

/// Flags of `gru-serve health`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// Server to ask: host:port, http://host:port or https://host:port.
    #[arg(long, env = "GRU_HEALTH_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Service name to check ("" = the whole server).
    #[arg(long, env = "GRU_HEALTH_SERVICE", default_value = "")]
    pub service: String,
    /// How long to wait for an answer.
    #[arg(long, env = "GRU_HEALTH_TIMEOUT", alias = "timeout-secs", default_value = "3s", value_name = "DURATION", value_parser = units::parse_duration)]
    pub timeout: Duration,
    /// CA (PEM) to verify the server's certificate: set = connect with TLS.
    #[arg(long, env = "GRU_HEALTH_CA")]
    pub ca: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the address' host).
    #[arg(long, env = "GRU_HEALTH_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Client certificate and key (PEM) when the server requires mutual TLS.
    #[arg(long, env = "GRU_HEALTH_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, env = "GRU_HEALTH_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// Flags of `gru-serve export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Model repository.
    #[arg(long, env = "GRU_MODEL_DIR", default_value = "models")]
    pub model_dir: PathBuf,
    /// Model name.
    #[arg(long, env = "GRU_EXPORT_MODEL")]
    pub model: String,
    /// Version (default: the latest).
    #[arg(long, env = "GRU_EXPORT_VERSION")]
    pub version: Option<u64>,
    /// Output file.
    #[arg(long, env = "GRU_EXPORT_OUT")]
    pub out: PathBuf,
    /// Key prefix of the GRU tensors.
    #[arg(long, env = "GRU_EXPORT_GRU_PREFIX", default_value = "gru.")]
    pub gru_prefix: String,
    /// Key prefix of the head tensors.
    #[arg(long, env = "GRU_EXPORT_HEAD_PREFIX", default_value = "head.")]
    pub head_prefix: String,
}
