//! The stateful runtime: model repository, sessions, batched compute workers.
//! No gRPC types here; `src/service` maps these to and from the wire.

pub mod batcher;
mod error;
mod housekeeping;
pub mod ids;
mod owner;
pub mod predict;
pub mod registry;
pub mod replies;
pub mod rows;
pub mod sessions;
mod spin;
pub mod state;
mod steps;
pub mod store;
pub mod training;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use batcher::{StepInput, StepReply};
pub use error::EngineError;
pub use owner::Owner;
pub use registry::{ModelMeta, Registry, ServedModel};
pub use sessions::{ExportedState, OpenParams, Session, SessionStore};
pub use state::{HiddenState, StepOutcome};
pub use steps::{PendingStep, StreamSessions, STREAM_SESSIONS_MAX};
pub use store::{StoreConfig, StoreSpec};
pub use training::{Training, TrainingConfig};

/// What an open continues from, when not a fresh session.
pub enum Resume {
    /// An exported state (model, version, step index, h).
    State(ExportedState),
    /// A whole stored session (GetSessionState's `snapshot`): also its
    /// last reply, so a retry of its last message is answered exactly once.
    Snapshot(store::pb::SessionSnapshot),
}

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
    /// How long a lightly loaded compute worker waits awake for the next
    /// step before it sleeps (zero: never); see `batcher::Spin`.
    pub worker_spin: Duration,
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
    /// Where sessions outlive the process: memory, files or Redis.
    pub store: StoreConfig,
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
            worker_spin: Duration::from_micros(200),
            queue_capacity: 4096,
            max_steps_per_message: 4096,
            max_predict_sequences: 4096,
            max_predict_steps: 1 << 22,
            max_predict_bytes: 1 << 30,
            max_retained_reply_bytes: 1 << 30,
            training: TrainingConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

/// The async handle the service holds: cheap to clone. A facade: its parts
/// are reached through its methods only.
#[derive(Clone)]
pub struct Engine {
    registry: Arc<Registry>,
    sessions: Arc<SessionStore>,
    durable: Arc<store::Durable>,
    training: Arc<Training>,
    config: Arc<EngineConfig>,
}

impl Engine {
    /// Loads every model under `config.model_dir` (bad folders are skipped
    /// with a log line) and starts one compute worker per model version.
    pub fn load(config: EngineConfig) -> Result<Engine, EngineError> {
        let registry = Arc::new(Registry::load(&config)?);
        let (durable, stored) = store::Durable::open(&config.store, &config.model_dir)
            .map_err(EngineError::SessionStore)?;
        let mut sessions = SessionStore::new(config.max_sessions, config.session_ttl);
        if !durable.is_memory() {
            sessions = sessions.track_removed();
        }
        let sessions = Arc::new(sessions);
        if !stored.is_empty() {
            let (found, started) = (stored.len(), std::time::Instant::now());
            let n = store::restore_all(&sessions, &registry, stored);
            tracing::info!(
                restored = n,
                skipped = found - n,
                secs = started.elapsed().as_secs_f64(),
                store = %durable.label(),
                "sessions restored"
            );
        }
        let training =
            Training::start(config.training.clone(), &config.model_dir, registry.clone())?;
        Ok(Engine {
            registry,
            sessions,
            durable: Arc::new(durable),
            training,
            config: Arc::new(config),
        })
    }

    /// The session store's checkpoints (and, with Redis, the takeover
    /// notices), until `cancel`. Spawned once the engine is loaded.
    /// The takeover notices, handoffs and heartbeat run on until the final
    /// flush: through the drain, this replica still hands its sessions
    /// over to the replicas taking its traffic.
    pub fn spawn_store_tasks(&self, cancel: tokio_util::sync::CancellationToken) {
        tokio::spawn(store::run_checkpoints(
            self.durable.clone(),
            self.sessions.clone(),
            cancel,
        ));
        let stop = self.durable.stopped();
        tokio::spawn(store::listen_takeovers(
            self.durable.clone(),
            self.sessions.clone(),
            stop.clone(),
        ));
        tokio::spawn(store::run_heartbeat(self.durable.clone(), stop));
    }

    /// Writes every live session to the store (at shutdown, after the
    /// drain) and lets go of them; returns how many. Memory: nothing.
    pub async fn flush_sessions(&self) -> Result<usize, String> {
        let r = store::checkpoint(&self.durable, &self.sessions, true).await;
        self.durable.stopped().cancel();
        r
    }

    /// Where sessions are kept: "memory", "file:DIR" or the Redis URL
    /// (without its password).
    pub fn session_store(&self) -> &str {
        self.durable.label()
    }

    /// A session in the stores' format (GetSessionState).
    pub fn snapshot(&self, s: &Session) -> store::pb::SessionSnapshot {
        let d = s.lock();
        store::snapshot::of(s, &d, self.sessions.ttl())
    }

    /// With a shared store: takes session `id` over from it when this
    /// process does not hold it, so the call that follows finds it here.
    /// Without one, or when held: nothing.
    pub async fn ensure_session(&self, id: &str, owner: Option<&str>) -> Result<(), EngineError> {
        if self.durable.is_shared() && !self.sessions.holds(id) {
            // Boxed: streams await this for every message, and the
            // takeover's future would size theirs (moved on every call).
            Box::pin(store::adopt(
                &self.durable,
                &self.sessions,
                &self.registry,
                id,
                owner,
            ))
            .await?;
        }
        Ok(())
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
    pub async fn session(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Arc<Session>, EngineError> {
        self.ensure_session(id, owner).await?;
        self.sessions.get_owned(id, owner)
    }

    /// Closes a caller's session; returns its step index.
    pub async fn close_session(&self, id: &str, owner: Option<&str>) -> Result<u64, EngineError> {
        self.ensure_session(id, owner).await?;
        let step_index = self.sessions.close(id, owner)?;
        store::closed(&self.durable, &self.sessions, id).await;
        Ok(step_index)
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

pub(super) fn check_finite(what: &str, v: &[f32]) -> Result<(), EngineError> {
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

    /// Opens a session (see [`SessionStore::open`]), validating the initial
    /// state. With a shared store, a key another replica holds takes that
    /// session over, and a new session is stored at once, so any replica
    /// finds it.
    pub async fn open_session(
        &self,
        model: &str,
        version: Option<u64>,
        key: Option<String>,
        owner: Option<String>,
        initial: Option<HiddenState>,
        resume: Option<Resume>,
    ) -> Result<(Arc<Session>, bool), EngineError> {
        if let Some(k) = &key {
            ids::check_key("session_key", k)?;
            // Unreachable or gone: the open goes on here.
            let _ = self.session_for_key(owner.as_deref(), k).await;
        }
        let tenant = owner.clone();
        let (s, created) = self.open_session_here(model, version, key, owner, initial, resume)?;
        if created && self.durable.is_shared() {
            if let Some(other) = store::created(&self.durable, &self.sessions, &s).await {
                // Another replica opened this key meanwhile: its session
                // wins, this one (never stepped) goes.
                self.sessions.drop_local(&s.id);
                store::adopt(
                    &self.durable,
                    &self.sessions,
                    &self.registry,
                    &other,
                    tenant.as_deref(),
                )
                .await?;
                return Ok((self.sessions.get_owned(&other, tenant.as_deref())?, false));
            }
        }
        Ok((s, created))
    }

    /// A caller's live session opened with `key`: held here, or (with a
    /// shared store) taken over from the replica that holds it. Ok(None):
    /// no such session.
    pub async fn session_for_key(
        &self,
        owner: Option<&str>,
        key: &str,
    ) -> Result<Option<Arc<Session>>, EngineError> {
        let who = Owner::of(owner.map(str::to_string));
        if let Some(id) = self.sessions.id_for_key(&who, key) {
            return Ok(self.sessions.get_owned(&id, owner).ok());
        }
        if !self.durable.is_shared() {
            return Ok(None);
        }
        let Some(id) = store::lookup_key(&self.durable, owner, key).await else {
            return Ok(None);
        };
        store::adopt(&self.durable, &self.sessions, &self.registry, &id, owner).await?;
        Ok(self.sessions.get_owned(&id, owner).ok())
    }

    /// [`Self::open_session`] without the shared store's lookups.
    fn open_session_here(
        &self,
        model: &str,
        version: Option<u64>,
        key: Option<String>,
        owner: Option<String>,
        initial: Option<HiddenState>,
        resume: Option<Resume>,
    ) -> Result<(Arc<Session>, bool), EngineError> {
        let check_model = |resumed: &str| {
            if !model.is_empty() && model != resumed {
                return Err(EngineError::ResumeModelMismatch {
                    model: model.to_string(),
                    resumed: resumed.to_string(),
                });
            }
            Ok(())
        };
        let (served, initial, step_index, last) = match (resume, initial) {
            (Some(_), Some(_)) => return Err(EngineError::ResumeWithInitial),
            (Some(Resume::State(r)), None) => {
                check_model(&r.model)?;
                let served = self.registry.get(&r.model, Some(r.version))?;
                Self::check_state("resume.hidden", &served, &r.hidden)?;
                if r.step_index > ids::MAX_STEP_INDEX {
                    return Err(EngineError::ResumeStepIndexTooLarge {
                        step_index: r.step_index,
                        max: ids::MAX_STEP_INDEX,
                    });
                }
                (served, Some(r.hidden.values), r.step_index, None)
            }
            (Some(Resume::Snapshot(mut snap)), None) => {
                check_model(&snap.model)?;
                // A snapshot the client kept is not bound by this server's
                // expiry; its id is not reused (the old session may live on).
                snap.expires_at_unix_ms = u64::MAX;
                if ids::check_id("session_id", &snap.session_id).is_err() {
                    snap.session_id = sessions::new_id();
                }
                let r =
                    store::snapshot::restore(&self.registry, snap, Some(0), self.sessions.ttl())
                        .map_err(|e| match e {
                            store::snapshot::RestoreError::Engine(e) => e,
                            other => EngineError::BadSnapshot(other.to_string()),
                        })?;
                (r.model, Some(r.data.h), r.data.step_index, r.data.last)
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
                (served, h, 0, None)
            }
        };
        self.sessions.open(
            served,
            OpenParams {
                key,
                owner: Owner::of(owner),
                initial,
                step_index,
                last,
            },
        )
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
