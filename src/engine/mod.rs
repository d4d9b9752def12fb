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
pub mod state;
pub mod training;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::model::ModelError;

pub use batcher::{StepInput, StepReply};
pub use registry::{ModelMeta, Registry, ServedModel};
pub use sessions::{ExportedState, OpenParams, Session, SessionStore};
pub use state::{HiddenState, StepOutcome};
pub use training::{Training, TrainingConfig};

/// Errors of the engine, named by what happened. Each carries the values
/// involved and its message names them; `service` maps each variant to one
/// gRPC code, and [`EngineError::label`] tells them apart in metrics.
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
    /// A request that names no model.
    #[error("model is required")]
    ModelRequired,
    /// A value (an input or a state) that is NaN or infinite.
    #[error("{what}[{index}] = {value} is not finite")]
    NotFinite {
        what: String,
        index: usize,
        value: f32,
    },
    /// A hidden state whose shape is not the model's.
    #[error("{what}: expected {} layers × {} hidden = {} values, got {got_layers} × {got_hidden} with {got_values} values", .expected_layers, .expected_hidden, .expected_layers * .expected_hidden)]
    StateShape {
        what: String,
        expected_layers: usize,
        expected_hidden: usize,
        got_layers: usize,
        got_hidden: usize,
        got_values: usize,
    },
    /// An open that gives both an initial state and a state to resume.
    #[error("give either initial_state or resume, not both")]
    ResumeWithInitial,
    /// An open that names a model other than the resumed state's.
    #[error("model '{}' differs from the resumed state's model '{}'", ids::clip(.model), ids::clip(.resumed))]
    ResumeModelMismatch { model: String, resumed: String },
    /// A resumed state whose step index is past the largest.
    #[error("resume.step_index {step_index} is past the largest step index {max}")]
    ResumeStepIndexTooLarge { step_index: u64, max: u64 },
    /// A client key already naming a live session on another model version.
    #[error("session key '{}' belongs to a session on model '{model}' version {version}, not '{asked_model}' version {asked_version}", ids::clip(.key))]
    SessionKeyConflict {
        key: String,
        model: String,
        version: u64,
        asked_model: String,
        asked_version: u64,
    },
    /// The live-session cap (`--max-sessions`) is reached and none is idle.
    #[error(
        "session limit reached: {live} live sessions (max {max}); close sessions or retry later"
    )]
    SessionLimit { live: usize, max: usize },
    /// A step message with no rows or more than `--max-steps-per-message`.
    #[error("inputs has {got} rows; a step message carries 1..={max} rows")]
    StepRowCount { got: usize, max: usize },
    /// A step message whose inputs do not fit the model's input size.
    #[error("inputs: model '{model}' takes {features} features per step; got {rows} rows × {cols} cols with {values} values")]
    StepInputShape {
        model: String,
        features: usize,
        rows: usize,
        cols: usize,
        values: usize,
    },
    /// A step message that starts at a step other than the session's, and
    /// is not a retry of the last message.
    #[error("session '{session}' is at step {expected}; this message starts at step {got} (only a retry of the last message, which started at {}, can be repeated)", step_or_none(.last_start))]
    StepIndexMismatch {
        session: String,
        expected: u64,
        got: u64,
        last_start: Option<u64>,
    },
    /// A retry of a message that was applied but whose reply was not kept.
    #[error("session '{session}': the message starting at step {start_step} was applied (the session is at step {at}), but its reply was not kept for a retry (the server's retained-reply budget was full); read the state with GetSessionState")]
    AlreadyAppliedReplyNotKept {
        session: String,
        start_step: u64,
        at: u64,
    },
    #[error("session '{}' is at step {at}; {steps} more steps would pass the largest step index {max}", ids::clip(.session))]
    StepIndexOverflow {
        session: String,
        at: u64,
        steps: u64,
        max: u64,
    },
    /// A model's bounded step queue (`--queue-capacity`) is full.
    #[error("model '{model}' has {capacity} requests queued (the limit); retry later")]
    QueueFull { model: String, capacity: usize },
    /// The server is shutting down: the worker takes no more requests.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The model's worker thread is gone: its queue refuses the request.
    #[error("the model worker has stopped")]
    WorkerStopped { model: String },
    /// The worker thread ended with the request queued, unanswered.
    #[error("the model worker stopped")]
    WorkerDroppedRequest { model: String },
    #[error("the compute worker of model '{model}' failed on this batch (a bug, logged); the request was not applied, retry it")]
    WorkerPanicked { model: String },
    /// A Predict with no sequences or more than `--max-predict-sequences`.
    #[error("sequences: {got} given; 1..={max} allowed")]
    PredictSequenceCount { got: usize, max: usize },
    /// A Predict with more steps in total than `--max-predict-steps`.
    #[error("{got} steps in total; at most {max}")]
    PredictStepCount { got: usize, max: usize },
    /// A Predict sequence with no rows, or inputs not rows of the model's size.
    #[error("sequences[{index}].inputs: expected rows ≥ 1 of {features} features, got {values} values for {rows} rows")]
    PredictInputShape {
        index: usize,
        features: usize,
        values: usize,
        rows: usize,
    },
    #[error("Predict needs about {need_bytes} bytes of memory for these sequences; this server allows {limit_bytes} (--max-predict-bytes): send fewer or shorter sequences")]
    PredictTooLarge { need_bytes: u64, limit_bytes: u64 },
    /// The model folder cannot be read.
    #[error("model dir {}: {error}", .dir.display())]
    ModelDirUnreadable { dir: PathBuf, error: std::io::Error },
    // Still built by the training code (src/engine/training.rs) and by
    // `From<ModelError>`; the engine's own refusals use the variants above.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    /// A fault of the server itself (tensor errors, a failed thread spawn).
    #[error("internal error: {0}")]
    Internal(String),
}

/// "none", or the step: for a message naming the last start step.
fn step_or_none(step: &Option<u64>) -> String {
    step.map_or("none".to_string(), |s| s.to_string())
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
            EngineError::ModelRequired => "model_required",
            EngineError::NotFinite { .. } => "not_finite",
            EngineError::StateShape { .. } => "state_shape",
            EngineError::ResumeWithInitial => "resume_with_initial",
            EngineError::ResumeModelMismatch { .. } => "resume_model_mismatch",
            EngineError::ResumeStepIndexTooLarge { .. } => "resume_step_index_too_large",
            EngineError::SessionKeyConflict { .. } => "session_key_conflict",
            EngineError::SessionLimit { .. } => "session_limit",
            EngineError::StepRowCount { .. } => "step_row_count",
            EngineError::StepInputShape { .. } => "step_input_shape",
            EngineError::StepIndexMismatch { .. } => "step_index_mismatch",
            EngineError::AlreadyAppliedReplyNotKept { .. } => "already_applied_reply_not_kept",
            EngineError::StepIndexOverflow { .. } => "step_index_overflow",
            EngineError::QueueFull { .. } => "queue_full",
            EngineError::ShuttingDown => "shutting_down",
            EngineError::WorkerStopped { .. } => "worker_stopped",
            EngineError::WorkerDroppedRequest { .. } => "worker_dropped_request",
            EngineError::WorkerPanicked { .. } => "worker_panicked",
            EngineError::PredictSequenceCount { .. } => "predict_sequence_count",
            EngineError::PredictStepCount { .. } => "predict_step_count",
            EngineError::PredictInputShape { .. } => "predict_input_shape",
            EngineError::PredictTooLarge { .. } => "predict_too_large",
            EngineError::ModelDirUnreadable { .. } => "model_dir_unreadable",
            EngineError::InvalidArgument(_) => "invalid_argument",
            EngineError::FailedPrecondition(_) => "failed_precondition",
            EngineError::ResourceExhausted(_) => "resource_exhausted",
            EngineError::Unavailable(_) => "unavailable",
            EngineError::Internal(_) => "internal",
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

/// The async handle the service holds: cheap to clone. A facade: its parts
/// are reached through its methods only.
#[derive(Clone)]
pub struct Engine {
    registry: Arc<Registry>,
    sessions: Arc<SessionStore>,
    training: Arc<Training>,
    config: Arc<EngineConfig>,
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

    /// The model `name` at `version`, or its latest version.
    pub fn model(&self, name: &str, version: Option<u64>) -> Result<Arc<ServedModel>, EngineError> {
        self.registry.get(name, version)
    }

    /// Every served model's latest version, with the list of its versions.
    pub fn models(&self) -> Vec<(Arc<ServedModel>, Vec<u64>)> {
        self.registry.list()
    }

    /// Every served version of every model (for the metrics gauges).
    pub fn served_versions(&self) -> Vec<Arc<ServedModel>> {
        self.registry.all()
    }

    /// The served versions of model `name`, oldest first.
    pub fn versions(&self, name: &str) -> Vec<u64> {
        self.registry.versions(name)
    }

    /// Whether any model is served.
    pub fn has_models(&self) -> bool {
        !self.registry.is_empty()
    }

    /// How many sessions are live.
    pub fn live_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// How long an idle session lives.
    pub fn session_ttl(&self) -> Duration {
        self.sessions.ttl()
    }

    /// A caller's session; another tenant's is NOT_FOUND like a missing one.
    pub fn session(&self, id: &str, owner: Option<&str>) -> Result<Arc<Session>, EngineError> {
        self.sessions.get_owned(id, owner)
    }

    /// Closes a caller's session; returns its step index.
    pub fn close_session(&self, id: &str, owner: Option<&str>) -> Result<u64, EngineError> {
        self.sessions.close(id, owner)
    }

    /// The training jobs: submit, watch, list, cancel.
    pub fn training(&self) -> &Training {
        &self.training
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
        let PendingStep { session, rx } = self;
        rx.await.map_err(|_| EngineError::WorkerDroppedRequest {
            model: session.model.name.clone(),
        })?
    }
}

/// One sequence of a Predict request.
pub struct PredictSeq {
    /// [len × input] row-major.
    pub inputs: Vec<f32>,
    pub len: usize,
    /// Optional initial h as declared by the client; checked against the model.
    pub initial: Option<HiddenState>,
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
        Some(p) => Err(EngineError::NotFinite {
            what: what.to_string(),
            index: p,
            value: v[p],
        }),
        None => Ok(()),
    }
}

impl Engine {
    fn check_state(what: &str, m: &ServedModel, state: &HiddenState) -> Result<(), EngineError> {
        let c = m.model.config();
        let HiddenState {
            layers,
            hidden,
            values: h,
        } = state;
        let (layers, hidden) = (*layers, *hidden);
        if layers != c.num_layers || hidden != c.hidden_size || h.len() != layers * hidden {
            return Err(EngineError::StateShape {
                what: what.to_string(),
                expected_layers: c.num_layers,
                expected_hidden: c.hidden_size,
                got_layers: layers,
                got_hidden: hidden,
                got_values: h.len(),
            });
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
        initial: Option<HiddenState>,
        resume: Option<ExportedState>,
    ) -> Result<(Arc<Session>, bool), EngineError> {
        if let Some(k) = &key {
            ids::check_key("session_key", k)?;
        }
        let (served, initial, step_index) = match (resume, initial) {
            (Some(_), Some(_)) => return Err(EngineError::ResumeWithInitial),
            (Some(r), None) => {
                if !model.is_empty() && model != r.model {
                    return Err(EngineError::ResumeModelMismatch {
                        model: model.to_string(),
                        resumed: r.model,
                    });
                }
                let served = self.registry.get(&r.model, Some(r.version))?;
                Self::check_state("resume.hidden", &served, &r.hidden)?;
                if r.step_index > ids::MAX_STEP_INDEX {
                    return Err(EngineError::ResumeStepIndexTooLarge {
                        step_index: r.step_index,
                        max: ids::MAX_STEP_INDEX,
                    });
                }
                (served, Some(r.hidden.values), r.step_index)
            }
            (None, init) => {
                let served = self.registry.get(model, version)?;
                let h = match init {
                    Some(state) => {
                        Self::check_state("initial_state", &served, &state)?;
                        Some(state.values)
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

    /// Validates a step message and queues it on the session's model
    /// worker, without waiting. Synchronous on purpose: messages submitted
    /// one after another are applied in that order (a stream's messages for
    /// one session must be).
    pub fn submit_step(
        &self,
        session_id: &str,
        owner: Option<&str>,
        input: StepInput,
    ) -> Result<PendingStep, EngineError> {
        let session = self.sessions.get_owned(session_id, owner)?;
        let StepInput {
            ref inputs,
            rows: k,
            cols,
            ..
        } = input;
        let i = session.model.model.config().input_size;
        if k == 0 || k > self.config.max_steps_per_message {
            return Err(EngineError::StepRowCount {
                got: k,
                max: self.config.max_steps_per_message,
            });
        }
        if cols != i || inputs.len() != k * i {
            return Err(EngineError::StepInputShape {
                model: session.model.name.clone(),
                features: i,
                rows: k,
                cols,
                values: inputs.len(),
            });
        }
        check_finite("inputs", inputs)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        session.model.worker.submit(batcher::StepJob {
            session: session.state().clone(),
            input,
            reply: tx,
            span: tracing::Span::current(),
        })?;
        Ok(PendingStep { session, rx })
    }

    /// Feeds a step message to a session and waits for the reply.
    pub async fn step(
        &self,
        session_id: &str,
        owner: Option<&str>,
        input: StepInput,
    ) -> Result<StepReply, EngineError> {
        self.submit_step(session_id, owner, input)?.wait().await
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
            return Err(EngineError::PredictSequenceCount {
                got: seqs.len(),
                max: self.config.max_predict_sequences,
            });
        }
        let total: usize = seqs.iter().map(|s| s.len).sum();
        if total > self.config.max_predict_steps {
            return Err(EngineError::PredictStepCount {
                got: total,
                max: self.config.max_predict_steps,
            });
        }
        for (n, s) in seqs.iter().enumerate() {
            if s.len == 0 || s.inputs.len() != s.len * c.input_size {
                return Err(EngineError::PredictInputShape {
                    index: n,
                    features: c.input_size,
                    values: s.inputs.len(),
                    rows: s.len,
                });
            }
            check_finite(&format!("sequences[{n}].inputs"), &s.inputs)?;
            if let Some(state) = &s.initial {
                Self::check_state(&format!("sequences[{n}].initial_state"), &served, state)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels become metric labels: each refusal must be told apart, and a
    /// moved message must read as before (clients and tests match texts).
    #[test]
    fn each_engine_refusal_has_its_own_label_and_its_old_message() {
        let s = || "s1".to_string();
        let all = [
            EngineError::ModelNotFound(s()),
            EngineError::VersionNotFound {
                name: s(),
                version: 2,
                available: vec![1],
            },
            EngineError::SessionNotFound(s()),
            EngineError::SessionExpired {
                id: s(),
                idle_secs: 1,
                ttl_secs: 1,
            },
            EngineError::JobNotFound(s()),
            EngineError::BadId {
                what: "session_id",
                value: s(),
                len: 2,
                rule: "r",
            },
            EngineError::ModelRequired,
            EngineError::NotFinite {
                what: "inputs".into(),
                index: 3,
                value: f32::NAN,
            },
            EngineError::StateShape {
                what: "initial_state".into(),
                expected_layers: 2,
                expected_hidden: 8,
                got_layers: 1,
                got_hidden: 8,
                got_values: 7,
            },
            EngineError::ResumeWithInitial,
            EngineError::ResumeModelMismatch {
                model: "a".into(),
                resumed: "b".into(),
            },
            EngineError::ResumeStepIndexTooLarge {
                step_index: 9,
                max: 8,
            },
            EngineError::SessionKeyConflict {
                key: "k".into(),
                model: "a".into(),
                version: 1,
                asked_model: "b".into(),
                asked_version: 2,
            },
            EngineError::SessionLimit { live: 2, max: 2 },
            EngineError::StepRowCount { got: 0, max: 4 },
            EngineError::StepInputShape {
                model: "m".into(),
                features: 3,
                rows: 2,
                cols: 2,
                values: 4,
            },
            EngineError::StepIndexMismatch {
                session: s(),
                expected: 4,
                got: 5,
                last_start: None,
            },
            EngineError::AlreadyAppliedReplyNotKept {
                session: s(),
                start_step: 1,
                at: 3,
            },
            EngineError::StepIndexOverflow {
                session: s(),
                at: 1,
                steps: 2,
                max: 2,
            },
            EngineError::QueueFull {
                model: "m/1".into(),
                capacity: 8,
            },
            EngineError::ShuttingDown,
            EngineError::WorkerStopped {
                model: "m/1".into(),
            },
            EngineError::WorkerDroppedRequest { model: "m".into() },
            EngineError::WorkerPanicked {
                model: "m/1".into(),
            },
            EngineError::PredictSequenceCount { got: 0, max: 4 },
            EngineError::PredictStepCount { got: 7, max: 6 },
            EngineError::PredictInputShape {
                index: 1,
                features: 3,
                values: 4,
                rows: 2,
            },
            EngineError::PredictTooLarge {
                need_bytes: 2,
                limit_bytes: 1,
            },
            EngineError::ModelDirUnreadable {
                dir: PathBuf::from("models"),
                error: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
            EngineError::Internal("x".into()),
        ];
        let mut labels: Vec<&str> = all.iter().map(EngineError::label).collect();
        labels.sort_unstable();
        let n = labels.len();
        labels.dedup();
        assert_eq!(labels.len(), n, "labels repeat: {labels:?}");

        // The texts the variants replaced, as they were built by format!.
        let said = |i: usize| all[i].to_string();
        assert_eq!(said(7), "inputs[3] = NaN is not finite");
        assert_eq!(
            said(8),
            "initial_state: expected 2 layers × 8 hidden = 16 values, got 1 × 8 with 7 values"
        );
        assert_eq!(
            said(16),
            "session 's1' is at step 4; this message starts at step 5 (only a retry of the last message, which started at none, can be repeated)"
        );
        assert_eq!(
            said(19),
            "model 'm/1' has 8 requests queued (the limit); retry later"
        );
    }
}
