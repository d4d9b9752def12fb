//! The stateful runtime: model repository, sessions, batched compute workers.
//! No gRPC types here; `src/service` maps these to and from the wire.

pub mod batcher;
mod error;
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

pub use batcher::{StepInput, StepReply};
pub use error::EngineError;
pub use registry::{ModelMeta, Registry, ServedModel};
pub use sessions::{ExportedState, OpenParams, Session, SessionStore};
pub use state::{HiddenState, StepOutcome};
pub use training::{Training, TrainingConfig};

/// Errors of the engine, named by what happened. Each carries the values
/// involved and its message names them; `service` maps each variant to one
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
    /// Why no model is served, naming the model directory.
    pub fn no_models_reason(&self) -> String {
        self.registry.empty_reason()
    }

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

    /// Loads version folders added to the repository since the last scan
    /// (Triton's RepositoryModelLoad); returns the (name, version)s added.
    pub async fn rescan_models(&self) -> Result<Vec<(String, u64)>, EngineError> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || registry.scan())
            .await
            .map_err(|e| EngineError::Internal(format!("rescan task: {e}")))?
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
