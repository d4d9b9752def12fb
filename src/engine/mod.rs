//! The stateful runtime: model repository, sessions, batched compute workers.
//! No gRPC types here; `src/service` maps these to and from the wire.

pub mod batcher;
mod housekeeping;
pub mod ids;
pub mod predict;
pub mod registry;
pub mod replies;
pub mod rows;
pub mod sessions;
pub mod training;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::model::ModelError;

pub use registry::{ModelMeta, Registry, ServedModel};
pub use sessions::StepOutcome;
pub use sessions::{ExportedState, OpenParams, Session, SessionStore};
pub use training::{Training, TrainingConfig};

/// Errors of the engine. Each names what was wrong and the values involved;
/// `service` maps each variant to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model '{}' not found", ids::clip(.0))]
    ModelNotFound(String),
    #[error("model '{}' has no version {version} (serving versions {available:?})", ids::clip(.name))]
    VersionNotFound {
        name: String,
        version: u64,
        available: Vec<u64>,
    },
    #[error("session '{}' not found", ids::clip(.0))]
    SessionNotFound(String),
    #[error("session '{}' expired after {idle_secs} s idle (ttl {ttl_secs} s)", ids::clip(.id))]
    SessionExpired {
        id: String,
        idle_secs: u64,
        ttl_secs: u64,
    },
    #[error("training job '{}' not found", ids::clip(.0))]
    JobNotFound(String),
    /// An id or name that cannot be one (too long, or outside its alphabet).
    #[error("{what} '{}' ({len} bytes) is not valid: {rule}", ids::clip(.value))]
    BadId {
        what: &'static str,
        value: String,
        len: usize,
        rule: &'static str,
    },
    #[error("Predict needs about {need_bytes} bytes of memory for these sequences; this server allows {limit_bytes} (--max-predict-bytes): send fewer or shorter sequences")]
    PredictTooLarge { need_bytes: u64, limit_bytes: u64 },
    #[error("session '{}' is at step {at}; {steps} more steps would pass the largest step index {max}", ids::clip(.session))]
    StepIndexOverflow {
        session: String,
        at: u64,
        steps: u64,
        max: u64,
    },
    #[error("the compute worker of model '{model}' failed on this batch (a bug, logged); the request was not applied, retry it")]
    WorkerPanicked { model: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Training(#[from] training::TrainingError),
}

impl EngineError {
    /// A stable short name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            EngineError::ModelNotFound(_) => "model_not_found",
            EngineError::VersionNotFound { .. } => "version_not_found",
            EngineError::SessionNotFound(_) => "session_not_found",
            EngineError::SessionExpired { .. } => "session_expired",
            EngineError::JobNotFound(_) => "job_not_found",
            EngineError::BadId { .. } => "bad_id",
            EngineError::PredictTooLarge { .. } => "predict_too_large",
            EngineError::StepIndexOverflow { .. } => "step_index_overflow",
            EngineError::WorkerPanicked { .. } => "worker_panicked",
            EngineError::InvalidArgument(_) => "invalid_argument",
            EngineError::FailedPrecondition(_) => "failed_precondition",
            EngineError::ResourceExhausted(_) => "resource_exhausted",
            EngineError::Unavailable(_) => "unavailable",
            EngineError::Internal(_) => "internal",
            EngineError::Training(e) => e.label(),
        }
    }
}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Input(m) | ModelError::Shape(m) => EngineError::InvalidArgument(m),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Internal(format!("tensor: {e}"))
    }
}

/// Settings of the engine; every field has a `GRU_*` flag in `config.rs`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_dir: PathBuf,
    /// Where models live and compute: CPU, or a CUDA device (`cuda` feature).
    pub device: candle_core::Device,
    /// How often to look for new version folders in `model_dir`; zero = only at start.
    pub model_poll: Duration,
    /// Most live sessions; opening past it is RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// Idle time after which a session expires.
    pub session_ttl: Duration,
    /// Most session-steps one batched step may gather.
    pub max_batch: usize,
    /// Bounded queue of pending requests per model worker.
    pub queue_capacity: usize,
    /// Most steps (rows) one step message may carry.
    pub max_steps_per_message: usize,
    /// Most sequences in one Predict, and most total steps.
    pub max_predict_sequences: usize,
    pub max_predict_steps: usize,
    /// Most memory one Predict may hold (see [`predict::predict_bytes`]).
    pub max_predict_bytes: u64,
    /// Most bytes of last replies all sessions keep to answer retries.
    pub max_retained_reply_bytes: u64,
    /// Training jobs: threads, queue and limits.
    pub training: TrainingConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            model_dir: PathBuf::from("models"),
            device: candle_core::Device::Cpu,
            model_poll: Duration::ZERO,
            max_sessions: 100_000,
            session_ttl: Duration::from_secs(600),
            max_batch: 256,
            queue_capacity: 4096,
            max_steps_per_message: 4096,
            max_predict_sequences: 4096,
            max_predict_steps: 1 << 22,
            max_predict_bytes: 1 << 30,
            max_retained_reply_bytes: 1 << 30,
            training: TrainingConfig::default(),
        }
    }
}

/// The async handle the service holds: cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub registry: Arc<Registry>,
    pub sessions: Arc<SessionStore>,
    pub training: Arc<Training>,
    pub config: Arc<EngineConfig>,
}

impl Engine {
    /// Loads every model under `config.model_dir` (bad folders are skipped
    /// with a log line) and starts one compute worker per model version.
    pub fn load(config: EngineConfig) -> Result<Engine, EngineError> {
        let registry = Arc::new(Registry::load(&config)?);
        let sessions = Arc::new(SessionStore::new(config.max_sessions, config.session_ttl));
        let training =
            Training::start(config.training.clone(), &config.model_dir, registry.clone())?;
        Ok(Engine {
            registry,
            sessions,
            training,
            config: Arc::new(config),
        })
    }

    /// Interrupts training jobs, stops the workers (pending requests get
    /// UNAVAILABLE) and joins them.
    pub fn shutdown(&self) {
        self.training.shutdown();
        self.registry.shutdown();
    }
}

/// A queued step message (see [`Engine::submit_step`]).
pub struct PendingStep {
    pub session: Arc<Session>,
    rx: tokio::sync::oneshot::Receiver<Result<batcher::StepReply, EngineError>>,
}

impl PendingStep {
    /// The worker's reply.
    pub async fn wait(self) -> Result<batcher::StepReply, EngineError> {
        self.rx
            .await
            .map_err(|_| EngineError::Unavailable("the model worker stopped".into()))?
    }
}

/// One sequence of a Predict request.
pub struct PredictSeq {
    /// [len × input] row-major.
    pub inputs: Vec<f32>,
    pub len: usize,
    /// Optional initial h: (layers, hidden, [layers × hidden]) as declared
    /// by the client; checked against the model.
    pub initial: Option<(usize, usize, Vec<f32>)>,
}

pub struct PredictOut {
    pub model: Arc<ServedModel>,
    /// Per sequence: [len × output].
    pub outputs: Vec<Vec<f32>>,
    /// Per sequence: final h [layers × hidden].
    pub states: Vec<Vec<f32>>,
}

fn check_finite(what: &str, v: &[f32]) -> Result<(), EngineError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(p) => Err(EngineError::InvalidArgument(format!(
            "{what}[{p}] = {} is not finite",
            v[p]
        ))),
        None => Ok(()),
    }
}

impl Engine {
    fn check_state(
        &self,
        what: &str,
        m: &ServedModel,
        layers: usize,
        hidden: usize,
        h: &[f32],
    ) -> Result<(), EngineError> {
        let c = m.model.config();
        if layers != c.num_layers || hidden != c.hidden_size || h.len() != layers * hidden {
            return Err(EngineError::InvalidArgument(format!(
                "{what}: expected {} layers × {} hidden = {} values, got {layers} × {hidden} with {} values",
                c.num_layers,
                c.hidden_size,
                c.num_layers * c.hidden_size,
                h.len()
            )));
        }
        check_finite(what, h)
    }

    /// Opens a session (see [`SessionStore::open`]), validating the initial state.
    pub fn open_session(
        &self,
        model: &str,
        version: Option<u64>,
        key: Option<String>,
        owner: Option<String>,
        initial: Option<(usize, usize, Vec<f32>)>,
        resume: Option<ExportedState>,
    ) -> Result<(Arc<Session>, bool), EngineError> {
        if let Some(k) = &key {
            ids::check_key("session_key", k)?;
        }
        let (served, initial, step_index) = match (resume, initial) {
            (Some(_), Some(_)) => {
                return Err(EngineError::InvalidArgument(
                    "give either initial_state or resume, not both".into(),
                ))
            }
            (Some(r), None) => {
                if !model.is_empty() && model != r.model {
                    return Err(EngineError::InvalidArgument(format!(
                        "model '{}' differs from the resumed state's model '{}'",
                        ids::clip(model),
                        ids::clip(&r.model)
                    )));
                }
                let served = self.registry.get(&r.model, Some(r.version))?;
                self.check_state("resume.hidden", &served, r.num_layers, r.hidden_size, &r.h)?;
                if r.step_index > ids::MAX_STEP_INDEX {
                    return Err(EngineError::InvalidArgument(format!(
                        "resume.step_index {} is past the largest step index {}",
                        r.step_index,
                        ids::MAX_STEP_INDEX
                    )));
                }
                (served, Some(r.h), r.step_index)
            }
            (None, init) => {
                let served = self.registry.get(model, version)?;
                let h = match init {
                    Some((l, hs, h)) => {
                        self.check_state("initial_state", &served, l, hs, &h)?;
                        Some(h)
                    }
                    None => None,
                };
                (served, h, 0)
            }
        };
        self.sessions.open(
            served,
            OpenParams {
                key,
                owner,
                initial,
                step_index,
            },
        )
    }

    /// Validates a step message of `k` steps ([k × input] row-major) and
    /// queues it on the session's model worker, without waiting. Synchronous
    /// on purpose: messages submitted one after another are applied in that
    /// order (a stream's messages for one session must be).
    pub fn submit_step(
        &self,
        session_id: &str,
        owner: Option<&str>,
        inputs: Vec<f32>,
        k: usize,
        cols: usize,
        start_step: Option<u64>,
    ) -> Result<PendingStep, EngineError> {
        let session = self.sessions.get_owned(session_id, owner)?;
        let i = session.model.model.config().input_size;
        if k == 0 || k > self.config.max_steps_per_message {
            return Err(EngineError::InvalidArgument(format!(
                "inputs has {k} rows; a step message carries 1..={} rows",
                self.config.max_steps_per_message
            )));
        }
        if cols != i || inputs.len() != k * i {
            return Err(EngineError::InvalidArgument(format!(
                "inputs: model '{}' takes {i} features per step; got {k} rows × {cols} cols with {} values",
                session.model.name,
                inputs.len()
            )));
        }
        check_finite("inputs", &inputs)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        session.model.worker.submit(batcher::StepJob {
            session: session.clone(),
            inputs,
            k,
            start_step,
            reply: tx,
            span: tracing::Span::current(),
        })?;
        Ok(PendingStep { session, rx })
    }

    /// Feeds `k` steps ([k × input] row-major) to a session.
    pub async fn step(
        &self,
        session_id: &str,
        owner: Option<&str>,
        inputs: Vec<f32>,
        k: usize,
        cols: usize,
        start_step: Option<u64>,
    ) -> Result<batcher::StepReply, EngineError> {
        self.submit_step(session_id, owner, inputs, k, cols, start_step)?
            .wait()
            .await
    }

    /// Stateless forward of variable-length sequences, off the async runtime.
    pub async fn predict(
        &self,
        model: &str,
        version: Option<u64>,
        seqs: Vec<PredictSeq>,
    ) -> Result<PredictOut, EngineError> {
        let served = self.registry.get(model, version)?;
        let c = served.model.config().clone();
        if seqs.is_empty() || seqs.len() > self.config.max_predict_sequences {
            return Err(EngineError::InvalidArgument(format!(
                "sequences: {} given; 1..={} allowed",
                seqs.len(),
                self.config.max_predict_sequences
            )));
        }
        let total: usize = seqs.iter().map(|s| s.len).sum();
        if total > self.config.max_predict_steps {
            return Err(EngineError::InvalidArgument(format!(
                "{total} steps in total; at most {}",
                self.config.max_predict_steps
            )));
        }
        for (n, s) in seqs.iter().enumerate() {
            if s.len == 0 || s.inputs.len() != s.len * c.input_size {
                return Err(EngineError::InvalidArgument(format!(
                    "sequences[{n}].inputs: expected rows ≥ 1 of {} features, got {} values for {} rows",
                    c.input_size,
                    s.inputs.len(),
                    s.len
                )));
            }
            check_finite(&format!("sequences[{n}].inputs"), &s.inputs)?;
            if let Some((layers, hidden, h)) = &s.initial {
                self.check_state(
                    &format!("sequences[{n}].initial_state"),
                    &served,
                    *layers,
                    *hidden,
                    h,
                )?;
            }
        }
        let need_bytes = predict::predict_bytes(&c, &seqs);
        if need_bytes > self.config.max_predict_bytes {
            return Err(EngineError::PredictTooLarge {
                need_bytes,
                limit_bytes: self.config.max_predict_bytes,
            });
        }
        let m = served.clone();
        let (outputs, states) = tokio::task::spawn_blocking(move || predict::run(&m.model, &seqs))
            .await
            .map_err(|e| EngineError::Internal(format!("predict task: {e}")))??;
        Ok(PredictOut {
            model: served,
            outputs,
            states,
        })
    }
}
