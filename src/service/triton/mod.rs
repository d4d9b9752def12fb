//! The KServe v2 / Triton inference protocol: a thin adapter over the same
//! engine as gru.v1. One core ([`Triton`]) holds the protocol's logic:
//! model lookups by Triton's version strings, metadata and config, and
//! sequences mapped onto sessions (`infer.rs`); the gRPC service
//! (`grpc.rs`) and the HTTP/JSON routes (`http.rs`) only translate.
//!
//! Sequences are sessions: START opens one (a START on a live sequence
//! starts it afresh, as Triton's model sees START again), each request steps
//! its rows, END closes it after the reply. Errors follow Triton's table
//! (`error.rs`).

use std::sync::{Arc, OnceLock};

use crate::engine::{Engine, ServedModel};

pub mod decode;
pub mod error;
pub mod grpc;
pub mod http;
mod infer;
mod json;
pub mod model;
pub mod pb;
mod request;
mod sequences;
mod stats;
mod step;
pub mod tensor;
pub mod wire;

pub use error::{Kind, TritonError};
pub use infer::{Echo, InferRequest, InferResponse, Params, Refused, Submit, Submitted, Waiting};

/// Why the server is not ready (None when it is): the server layer's
/// readiness (models loaded, not draining), handed down as a function so
/// this layer never imports from the one above.
pub type NotReady = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// What the adapter needs to know of the server's settings.
#[derive(Debug, Clone, Copy)]
pub struct TritonSettings {
    /// Most sequences in one stateless request (`--max-predict-sequences`).
    pub max_batch_size: usize,
    /// Most live sessions (`--max-sessions`).
    pub max_sequences: usize,
}

/// The protocol core, shared by both transports.
pub struct Triton {
    engine: Arc<OnceLock<Engine>>,
    settings: TritonSettings,
    not_ready: NotReady,
    sequences: sequences::Sequences,
    stats: stats::Stats,
}

/// `ServerMetadata.extensions`: only what is implemented. Not
/// `model_repository` (unload is refused: the engine cannot unload).
pub const EXTENSIONS: [&str; 5] = [
    "sequence",
    "sequence(string_id)",
    "model_configuration",
    "binary_tensor_data",
    "statistics",
];

/// The server's name in ServerMetadata.
pub const SERVER_NAME: &str = "gru-serve";

/// A model's repository index entry.
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: &'static str,
}

impl Triton {
    pub fn new(
        engine: Arc<OnceLock<Engine>>,
        settings: TritonSettings,
        not_ready: NotReady,
    ) -> Self {
        Triton {
            engine,
            settings,
            not_ready,
            sequences: sequences::Sequences::default(),
            stats: stats::Stats::default(),
        }
    }

    fn engine(&self) -> Result<&Engine, TritonError> {
        self.engine.get().ok_or_else(|| {
            TritonError::new(Kind::Unavailable, "models are still loading; retry shortly")
        })
    }

    /// Whether the server is ready for inference, and if not why.
    pub fn not_ready(&self) -> Option<String> {
        (self.not_ready)()
    }

    /// The served version `version` ("" = latest) of `name`.
    pub fn model(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, TritonError> {
        let v = model::parse_version(version)?;
        if name.is_empty() {
            return Err(TritonError::invalid("model name is required"));
        }
        self.engine()?
            .model(name, v)
            .map_err(|_| model::not_found(name, v))
    }

    /// ModelReady: false for a model not served (an error only for a bad
    /// version string), as Triton answers.
    pub fn model_ready(&self, name: &str, version: &str) -> Result<bool, TritonError> {
        model::parse_version(version)?;
        Ok(self.not_ready().is_none() && self.model(name, version).is_ok())
    }

    pub fn metadata(&self, name: &str, version: &str) -> Result<model::Metadata, TritonError> {
        let m = self.model(name, version)?;
        let versions = self.engine()?.versions(&m.name);
        Ok(model::metadata(&m, &versions))
    }

    fn limits(&self) -> Result<model::Limits, TritonError> {
        Ok(model::Limits {
            max_batch_size: self.settings.max_batch_size,
            max_sequences: self.settings.max_sequences,
            idle_us: self
                .engine()?
                .session_ttl()
                .as_micros()
                .min(u64::MAX as u128) as u64,
        })
    }

    pub fn config(&self, name: &str, version: &str) -> Result<pb::ModelConfig, TritonError> {
        let m = self.model(name, version)?;
        Ok(model::config(&m, self.limits()?))
    }

    pub fn config_json(&self, name: &str, version: &str) -> Result<serde_json::Value, TritonError> {
        let m = self.model(name, version)?;
        Ok(model::config_json(&m, self.limits()?))
    }

    /// ModelStatistics: one model ("" = all) at one version ("" = all served).
    pub fn statistics(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Vec<pb::ModelStatistics>, TritonError> {
        let engine = self.engine()?;
        if name.is_empty() {
            return Ok(engine
                .models()
                .into_iter()
                .flat_map(|(m, versions)| self.stats.report(&m.name, &versions))
                .collect());
        }
        let m = self.model(name, version)?;
        let versions = match model::parse_version(version)? {
            Some(v) => vec![v],
            None => engine.versions(&m.name),
        };
        Ok(self.stats.report(&m.name, &versions))
    }

    /// RepositoryIndex: every served version, READY.
    pub fn index(&self) -> Result<Vec<IndexEntry>, TritonError> {
        Ok(self
            .engine()?
            .models()
            .into_iter()
            .flat_map(|(m, versions)| {
                versions.into_iter().map(move |v| IndexEntry {
                    name: m.name.clone(),
                    version: v.to_string(),
                    state: "READY",
                })
            })
            .collect())
    }

    /// RepositoryModelLoad: rescans the repository (new version folders are
    /// loaded, as `--model-poll` would), then answers whether `name` is served.
    pub async fn load(&self, name: &str) -> Result<(), TritonError> {
        let engine = self.engine()?;
        engine.rescan_models().await?;
        if engine.versions(name).is_empty() {
            return Err(TritonError::new(
                Kind::NotFound,
                format!(
                    "failed to load '{}': no loadable <name>/<version>/ folder for it in the model repository",
                    crate::engine::ids::clip(name)
                ),
            ));
        }
        Ok(())
    }

    /// RepositoryModelUnload: refused, naming why.
    pub fn unload(&self, name: &str) -> Result<(), TritonError> {
        Err(TritonError::new(
            Kind::Unsupported,
            format!(
                "RepositoryModelUnload of '{}': gru-serve does not unload models (every loaded version stays served until restart; sessions on it keep working)",
                crate::engine::ids::clip(name)
            ),
        ))
    }
}
