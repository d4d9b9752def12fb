//! Training jobs: a queue, runner threads apart from the serving workers,
//! progress that watchers can replay, durable job records, and atomic
//! publication of each result as a new model version.
//!
//! Lifecycle: `submit` checks everything it can (name, hyper-parameters, the
//! target model, the whole dataset, limits) and queues the job, or refuses it;
//! a runner thread takes it, trains with [`crate::model::train`] inside its
//! own rayon pool (so training never competes for the serving workers'
//! threads; at lower OS priority), and publishes:
//!
//! 1. write the model to `<model-dir>/<name>/.tmp-<job>/` (each file written
//!    and fsynced, then the folder fsynced);
//! 2. rename it to `<model-dir>/<name>/<version>/` and fsync `<name>/`;
//! 3. load it back from disk and serve it.
//!
//! A crash before 2 leaves a dot-folder that the registry never reads and
//! the next start deletes; after 2 the version is whole. Job records are
//! JSON files in `<model-dir>/.jobs/`, rewritten atomically at each state
//! change; a record found QUEUED or RUNNING at start was cut off by a stop
//! and becomes INTERRUPTED.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::registry::{load_version_dir, valid_model_name, Registry};
use super::EngineError;
use crate::model::train::{train, validate_dataset, Progress, Sequence, TrainConfig, TrainOutcome};
use crate::model::weights::{save_native, write_atomic};
use crate::model::{GruModel, ModelConfig, ModelError};

/// Limits and threads of the training side; every field has a `GRU_*` flag.
#[derive(Debug, Clone)]
pub struct TrainingConfig {
    /// Jobs that run at once; more wait in the queue.
    pub max_concurrent_jobs: usize,
    /// Compute threads each running job may use.
    pub threads_per_job: usize,
    /// Jobs that may wait; past it StartTraining is RESOURCE_EXHAUSTED.
    pub max_queued_jobs: usize,
    /// Largest dataset (4 bytes per value: inputs, targets, labels, weights).
    pub max_dataset_bytes: u64,
    /// Longest training sequence, in steps.
    pub max_sequence_len: usize,
    /// Largest model (parameters) a job may create.
    pub max_model_parameters: usize,
    /// Most memory one mini-batch's forward and BPTT may hold, worst case
    /// (`batch_size` rows padded to the longest sequence).
    pub max_batch_bytes: u64,
    /// OS niceness of training threads (Linux; 0 = same as serving).
    pub nice: i32,
    /// Finished job records kept (oldest dropped first).
    pub max_job_records: usize,
    /// Test hook: fail publication at this point, as a crash would (the
    /// temporary folder is left behind). Never set in production.
    #[doc(hidden)]
    pub fault: Option<PublishFault>,
}

#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFault {
    /// After the files are written and fsynced, before the rename.
    BeforeRename,
    /// The weights file comes out torn (half its bytes), as a failing disk
    /// or a bug would leave it; the check before the rename must catch it.
    TornWeights,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            max_concurrent_jobs: 1,
            threads_per_job: 1,
            max_queued_jobs: 16,
            max_dataset_bytes: 1 << 30,
            max_sequence_len: 100_000,
            max_model_parameters: 50_000_000,
            max_batch_bytes: 2 << 30,
            nice: 10,
            max_job_records: 1000,
            fault: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
}

impl JobState {
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// One progress report as clients see it (1-based epoch and batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressEvent {
    pub epoch: usize,
    pub epochs: usize,
    pub batch: usize,
    pub batches_per_epoch: usize,
    pub train_loss: f64,
    pub validation_loss: Option<f64>,
    /// None at epoch ends (no batch of its own).
    pub grad_norm: Option<f64>,
    pub sequences_per_second: f64,
    pub learning_rate: f64,
    pub elapsed_seconds: f64,
    pub eta_seconds: f64,
    pub epoch_done: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub model: String,
    pub version: u64,
    pub epochs_run: usize,
    pub final_train_loss: f64,
    pub best_validation_loss: Option<f64>,
    pub stopped_early: bool,
}

/// A job's state: what the RPCs report and what is written to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job_id: String,
    pub model: String,
    /// Fine-tuning: the version started from; 0 for a new model.
    pub base_version: u64,
    pub state: JobState,
    pub num_sequences: u64,
    pub dataset_bytes: u64,
    pub hyperparameters: TrainConfig,
    pub progress: Option<ProgressEvent>,
    pub result: Option<JobResult>,
    pub error: String,
    pub created_unix_ms: i64,
    pub started_unix_ms: i64,
    pub finished_unix_ms: i64,
    /// While queued: jobs ahead of this one. Computed, not stored.
    #[serde(skip)]
    pub queue_position: usize,
}

/// What a job trains: a new model, or a copy of a served one.
pub enum JobTarget {
    New {
        config: ModelConfig,
        description: String,
    },
    FineTune {
        /// None = the latest.
        base_version: Option<u64>,
    },
}

pub struct JobRequest {
    pub model: String,
    pub target: JobTarget,
    pub hyperparameters: TrainConfig,
    pub data: Vec<Sequence>,
}

/// Bytes a dataset counts against `max_dataset_bytes`: 4 per value.
pub fn sequence_bytes(s: &Sequence) -> u64 {
    use crate::model::train::SeqTarget;
    let targets = match &s.target {
        SeqTarget::Values(v) => v.len(),
        SeqTarget::Classes(c) => c.len(),
        SeqTarget::Class(_) => 1,
    };
    let weights = s.weights.as_ref().map_or(0, Vec::len);
    4 * (s.inputs.len() + targets + weights) as u64
}

/// What the runner needs, taken out of the job when it starts.
struct JobInput {
    base: GruModel,
    description: String,
    data: Vec<Sequence>,
}

struct Job {
    status: Mutex<JobStatus>,
    /// Recorded progress (every epoch end; batches at most every
    /// [`RECORD_EVERY`]), for watchers that replay from the start.
    events: Mutex<Vec<ProgressEvent>>,
    /// Bumped at every event and state change; watchers wait on it.
    changed: watch::Sender<u64>,
    cancel: AtomicBool,
    input: Mutex<Option<JobInput>>,
}

/// Batch events are recorded at most this often (epoch ends always are), so
/// a long job's replay history stays small.
const RECORD_EVERY: Duration = Duration::from_millis(200);
/// Recorded events per job at most; past it only epoch ends are recorded.
const MAX_EVENTS: usize = 20_000;

impl Job {
    fn new(status: JobStatus, input: Option<JobInput>) -> Arc<Job> {
        Arc::new(Job {
            status: Mutex::new(status),
            events: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            cancel: AtomicBool::new(false),
            input: Mutex::new(input),
        })
    }

    fn status(&self) -> JobStatus {
        lock(&self.status).clone()
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind;
    // keep serving it rather than poisoning every later RPC.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Queue {
    waiting: VecDeque<Arc<Job>>,
    stopping: bool,
}

/// The training side of the engine: cheap to share, one per server.
pub struct Training {
    config: TrainingConfig,
    model_dir: PathBuf,
    jobs_dir: PathBuf,
    registry: Arc<Registry>,
    /// Every known job, in creation order.
    jobs: Mutex<BTreeMap<(i64, String), Arc<Job>>>,
    queue: Mutex<Queue>,
    wake: Condvar,
    runners: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

const JOBS_DIR: &str = ".jobs";
const TMP_PREFIX: &str = ".tmp-";

impl Training {
    /// Cleans half-written versions left by a crash, reloads job records
    /// (marking cut-off ones INTERRUPTED), and starts the runner threads.
    pub fn start(
        config: TrainingConfig,
        model_dir: &Path,
        registry: Arc<Registry>,
    ) -> Result<Arc<Training>, EngineError> {
        clean_temporaries(model_dir);
        let jobs_dir = model_dir.join(JOBS_DIR);
        let training = Arc::new(Training {
            config: config.clone(),
            model_dir: model_dir.to_path_buf(),
            jobs_dir: jobs_dir.clone(),
            registry,
            jobs: Mutex::new(BTreeMap::new()),
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                stopping: false,
            }),
            wake: Condvar::new(),
            runners: Mutex::new(Vec::new()),
        });
        training.reload_records();
        let mut runners = lock(&training.runners);
        for n in 0..config.max_concurrent_jobs.max(1) {
            let t = training.clone();
            let handle = std::thread::Builder::new()
                .name(format!("train-{n}"))
                .spawn(move || t.runner())
                .map_err(|e| EngineError::Internal(format!("spawn training thread: {e}")))?;
            runners.push(handle);
        }
        drop(runners);
        Ok(training)
    }

    fn reload_records(&self) {
        let Ok(entries) = std::fs::read_dir(&self.jobs_dir) else {
            return;
        };
        let mut jobs = lock(&self.jobs);
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobStatus>(&b).map_err(|e| e.to_string()));
            let mut status = match parsed {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "skipping unreadable job record");
                    continue;
                }
            };
            if !status.state.is_final() {
                // Cut off by a stop. If its version was renamed into place
                // before the stop, the job did succeed: say so, or a client
                // trusting the record would train and publish it again.
                match published_by(&self.model_dir, &status.model, &status.job_id) {
                    Some(result) => {
                        tracing::info!(job = %status.job_id, model = %status.model, version = result.version, "a job cut off after publishing is marked succeeded");
                        status.state = JobState::Succeeded;
                        status.result = Some(result);
                        status.error = String::new();
                    }
                    None => {
                        status.state = JobState::Interrupted;
                        status.error = "the server stopped before the job finished".into();
                    }
                }
                status.finished_unix_ms = now_ms();
                self.persist(&status);
            }
            let key = (status.created_unix_ms, status.job_id.clone());
            jobs.insert(key, Job::new(status, None));
        }
        drop(jobs);
        self.prune_records();
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(format!("{id}.json"))
    }

    /// Writes the job's record atomically. A failure is logged, not fatal:
    /// the job itself is unaffected, only its durability.
    fn persist(&self, status: &JobStatus) {
        let write = || -> Result<(), String> {
            std::fs::create_dir_all(&self.jobs_dir).map_err(|e| e.to_string())?;
            let bytes = serde_json::to_vec_pretty(status).map_err(|e| e.to_string())?;
            write_atomic(&self.record_path(&status.job_id), &bytes).map_err(|e| e.to_string())
        };
        if let Err(e) = write() {
            tracing::warn!(job = %status.job_id, error = %e, "could not write the job record");
        }
    }

    /// Drops the oldest finished jobs past `max_job_records`.
    fn prune_records(&self) {
        let mut jobs = lock(&self.jobs);
        let finished: Vec<_> = jobs
            .iter()
            .filter(|(_, j)| lock(&j.status).state.is_final())
            .map(|(k, _)| k.clone())
            .collect();
        let excess = finished.len().saturating_sub(self.config.max_job_records);
        for key in finished.into_iter().take(excess) {
            jobs.remove(&key);
            let _ = std::fs::remove_file(self.record_path(&key.1));
        }
    }

    fn find(&self, id: &str) -> Result<Arc<Job>, EngineError> {
        super::ids::check_id("job_id", id)?;
        lock(&self.jobs)
            .values()
            .find(|j| lock(&j.status).job_id == id)
            .cloned()
            .ok_or_else(|| EngineError::JobNotFound(id.to_string()))
    }

    /// The config a job on `model` would train: the new spec, or the served
    /// base version's. Lets the service check data rows as they arrive.
    pub fn target_config(
        &self,
        model: &str,
        target: &JobTarget,
    ) -> Result<ModelConfig, EngineError> {
        if !valid_model_name(model) {
            return Err(EngineError::InvalidArgument(format!(
                "model name '{}' must be non-empty, use [A-Za-z0-9._-] and not start with '.'",
                super::ids::clip(model)
            )));
        }
        match target {
            JobTarget::New { config, .. } => {
                config
                    .validate()
                    .map_err(|e| EngineError::InvalidArgument(format!("new_model: {e}")))?;
                let params = config.num_parameters();
                if params > self.config.max_model_parameters {
                    return Err(EngineError::ResourceExhausted(format!(
                        "new_model has {params} parameters; this server trains at most {}",
                        self.config.max_model_parameters
                    )));
                }
                Ok(config.clone())
            }
            JobTarget::FineTune { base_version } => Ok(self
                .registry
                .get(model, *base_version)?
                .model
                .config()
                .clone()),
        }
    }

    pub fn max_dataset_bytes(&self) -> u64 {
        self.config.max_dataset_bytes
    }

    /// Checks a job whole and queues it: (job id, jobs ahead of it).
    pub fn submit(&self, req: JobRequest) -> Result<(String, usize), EngineError> {
        let config = self.target_config(&req.model, &req.target)?;
        req.hyperparameters
            .validate()
            .map_err(|e| EngineError::InvalidArgument(format!("hyperparameters: {e}")))?;
        let bytes: u64 = req.data.iter().map(sequence_bytes).sum();
        if bytes > self.config.max_dataset_bytes {
            return Err(EngineError::ResourceExhausted(format!(
                "the dataset is {bytes} bytes; at most {} are accepted",
                self.config.max_dataset_bytes
            )));
        }
        validate_dataset(&req.data, &config, self.config.max_sequence_len)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        let need = batch_bytes(&config, &req.data, req.hyperparameters.batch_size);
        if need > self.config.max_batch_bytes {
            return Err(EngineError::ResourceExhausted(format!(
                "a mini-batch of {} sequences padded to the longest ({} steps) needs about {need} bytes; this server allows {} (--max-training-batch-bytes): use a smaller batch_size or shorter sequences",
                req.hyperparameters.batch_size.min(req.data.len()),
                req.data.iter().map(|s| s.len(config.input_size)).max().unwrap_or(0),
                self.config.max_batch_bytes
            )));
        }
        let (base, base_version, description) = match req.target {
            JobTarget::New {
                config,
                description,
            } => (
                GruModel::init(config, req.hyperparameters.seed, self.registry.device())?,
                0,
                description,
            ),
            JobTarget::FineTune { base_version } => {
                let served = self.registry.get(&req.model, base_version)?;
                (
                    (*served.model).clone(),
                    served.version,
                    served.meta.description.clone(),
                )
            }
        };
        let id = format!("job-{}", super::sessions::new_id());
        let status = JobStatus {
            job_id: id.clone(),
            model: req.model,
            base_version,
            state: JobState::Queued,
            num_sequences: req.data.len() as u64,
            dataset_bytes: bytes,
            hyperparameters: req.hyperparameters,
            progress: None,
            result: None,
            error: String::new(),
            created_unix_ms: now_ms(),
            started_unix_ms: 0,
            finished_unix_ms: 0,
            queue_position: 0,
        };
        let job = Job::new(
            status.clone(),
            Some(JobInput {
                base,
                description,
                data: req.data,
            }),
        );
        let position = {
            let mut queue = lock(&self.queue);
            if queue.stopping {
                return Err(EngineError::Unavailable(
                    "the server is shutting down".into(),
                ));
            }
            if queue.waiting.len() >= self.config.max_queued_jobs {
                return Err(EngineError::ResourceExhausted(format!(
                    "{} training jobs are already queued (limit {}); retry later",
                    queue.waiting.len(),
                    self.config.max_queued_jobs
                )));
            }
            self.persist(&status);
            lock(&self.jobs).insert((status.created_unix_ms, id.clone()), job.clone());
            queue.waiting.push_back(job);
            queue.waiting.len() - 1
        };
        self.wake.notify_one();
        tracing::info!(job = %id, model = %status.model, sequences = status.num_sequences, bytes, position, "training job queued");
        Ok((id, position))
    }

    fn with_position(&self, job: &Job) -> JobStatus {
        let mut status = job.status();
        if status.state == JobState::Queued {
            let queue = lock(&self.queue);
            status.queue_position = queue
                .waiting
                .iter()
                .position(|j| std::ptr::eq(Arc::as_ptr(j), job))
                .unwrap_or(0);
        }
        status
    }

    pub fn get(&self, id: &str) -> Result<JobStatus, EngineError> {
        let job = self.find(id)?;
        Ok(self.with_position(&job))
    }

    /// Every known job, oldest first.
    pub fn list(&self) -> Vec<JobStatus> {
        let jobs: Vec<_> = lock(&self.jobs).values().cloned().collect();
        jobs.iter().map(|j| self.with_position(j)).collect()
    }

    /// Cancels a queued job at once, or a running one at its next batch
    /// (the returned state is then still RUNNING; watch for the end).
    pub fn cancel(&self, id: &str) -> Result<JobStatus, EngineError> {
        let job = self.find(id)?;
        let was_queued = {
            let mut queue = lock(&self.queue);
            let before = queue.waiting.len();
            queue.waiting.retain(|j| !Arc::ptr_eq(j, &job));
            queue.waiting.len() != before
        };
        if was_queued {
            self.finish(
                &job,
                JobState::Cancelled,
                "cancelled while queued".into(),
                None,
            );
        } else {
            let state = lock(&job.status).state;
            if state.is_final() {
                return Err(EngineError::FailedPrecondition(format!(
                    "job '{id}' already ended ({state:?})"
                )));
            }
            job.cancel.store(true, Ordering::Relaxed);
        }
        Ok(self.with_position(&job))
    }

    /// Follows a job: for WatchTraining.
    pub fn watch(&self, id: &str) -> Result<JobWatch, EngineError> {
        let job = self.find(id)?;
        let rx = job.changed.subscribe();
        Ok(JobWatch { job, rx })
    }

    fn finish(&self, job: &Job, state: JobState, error: String, result: Option<JobResult>) {
        let status = {
            let mut s = lock(&job.status);
            s.state = state;
            s.error = error;
            s.result = result;
            s.finished_unix_ms = now_ms();
            s.clone()
        };
        *lock(&job.input) = None;
        let outcome = match state {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            _ => "interrupted",
        };
        metrics::counter!("gru_training_jobs_finished_total", "outcome" => outcome).increment(1);
        self.persist(&status);
        job.notify();
        // The state by name, and no `error` field on a success.
        let error = (!status.error.is_empty()).then_some(status.error.as_str());
        tracing::info!(job = %status.job_id, state = outcome, error, "training job ended");
        self.prune_records();
    }

    /// Stops taking jobs, interrupts running and queued ones, and joins the
    /// runner threads.
    pub fn shutdown(&self) {
        let waiting: Vec<_> = {
            let mut queue = lock(&self.queue);
            queue.stopping = true;
            queue.waiting.drain(..).collect()
        };
        for job in waiting {
            self.finish(
                &job,
                JobState::Interrupted,
                "the server stopped before the job started".into(),
                None,
            );
        }
        for job in lock(&self.jobs).values() {
            job.cancel.store(true, Ordering::Relaxed);
        }
        self.wake.notify_all();
        let runners: Vec<_> = lock(&self.runners).drain(..).collect();
        for r in runners {
            let _ = r.join();
        }
    }

    fn stopping(&self) -> bool {
        lock(&self.queue).stopping
    }

    fn runner(self: Arc<Self>) {
        set_nice(self.config.nice);
        let nice = self.config.nice;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.config.threads_per_job.max(1))
            .thread_name(|n| format!("train-compute-{n}"))
            .start_handler(move |_| set_nice(nice))
            .build();
        let pool = match pool {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "could not start a training thread pool; training is off");
                return;
            }
        };
        loop {
            let job = {
                let mut queue = lock(&self.queue);
                loop {
                    if queue.stopping {
                        return;
                    }
                    if let Some(j) = queue.waiting.pop_front() {
                        break j;
                    }
                    queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
            };
            // Positions of the jobs still waiting changed.
            for j in lock(&self.queue).waiting.iter() {
                j.notify();
            }
            pool.install(|| self.run_job(&job));
        }
    }

    fn run_job(&self, job: &Arc<Job>) {
        let Some(input) = lock(&job.input).take() else {
            return;
        };
        let (id, model_name, hyper) = {
            let mut s = lock(&job.status);
            s.state = JobState::Running;
            s.started_unix_ms = now_ms();
            self.persist(&s);
            (s.job_id.clone(), s.model.clone(), s.hyperparameters.clone())
        };
        job.notify();
        tracing::info!(job = %id, model = %model_name, "training job started");
        let started = Instant::now();
        let mut last_record: Option<Instant> = None;
        let mut on_progress = |p: &Progress| {
            let event = progress_event(p, started.elapsed());
            let now = Instant::now();
            let mut events = lock(&job.events);
            let record = p.epoch_done
                || (events.len() < MAX_EVENTS
                    && last_record.is_none_or(|t| now - t >= RECORD_EVERY));
            if record {
                events.push(event.clone());
                last_record = Some(now);
            }
            drop(events);
            lock(&job.status).progress = Some(event);
            if !p.epoch_done {
                metrics::counter!("gru_training_batches_total").increment(1);
            }
            job.notify();
        };
        let outcome = train(
            &input.base,
            &input.data,
            &hyper,
            &job.cancel,
            &mut on_progress,
        );
        drop(input.data);
        match outcome {
            Ok(out) => match self.publish(&id, &model_name, &out, &input.description) {
                Ok(result) => {
                    self.finish(job, JobState::Succeeded, String::new(), Some(result));
                }
                Err(e) => self.finish(job, JobState::Failed, format!("publishing: {e}"), None),
            },
            Err(ModelError::Cancelled) if self.stopping() => self.finish(
                job,
                JobState::Interrupted,
                "the server stopped while the job was running".into(),
                None,
            ),
            Err(ModelError::Cancelled) => self.finish(
                job,
                JobState::Cancelled,
                "cancelled while running; nothing was published".into(),
                None,
            ),
            Err(e) => self.finish(job, JobState::Failed, e.to_string(), None),
        }
    }

    /// Writes `model` as the next version of `name` (see the module docs for
    /// why each step is crash-safe) and starts serving it.
    fn publish(
        &self,
        job_id: &str,
        name: &str,
        out: &TrainOutcome,
        description: &str,
    ) -> Result<JobResult, String> {
        let model = &out.model;
        // One change of the repository at a time (publications, rescans):
        // the version number is chosen, written and served under it.
        let _one_at_a_time = self.registry.change_guard();
        let root = self.model_dir.join(name);
        let new_root = !root.exists();
        // A failed first publish leaves no empty model folder behind.
        let undo_root = || {
            if new_root {
                let _ = std::fs::remove_dir(&root);
            }
        };
        if new_root {
            std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
            sync_dir(&self.model_dir)?;
        }
        let on_disk = std::fs::read_dir(&root)
            .map_err(|e| format!("{}: {e}", root.display()))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let served = self.registry.versions(name).last().copied().unwrap_or(0);
        let version = on_disk.max(served) + 1;
        let result = JobResult {
            model: name.to_string(),
            version,
            epochs_run: out.epochs_run,
            final_train_loss: out.final_train_loss,
            best_validation_loss: out.best_val_loss,
            stopped_early: out.stopped_early,
        };
        let tmp = root.join(format!("{TMP_PREFIX}{job_id}"));
        let _ = std::fs::remove_dir_all(&tmp);
        let write = || -> Result<(), String> {
            save_native(model, &tmp).map_err(|e| e.to_string())?;
            let serving = serde_json::json!({ "description": description });
            write_atomic(&tmp.join("serving.json"), serving.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
            // The result travels with the version, so a crash between the
            // rename and the job record's update is reconciled at start.
            let provenance = serde_json::json!({
                "job_id": job_id,
                "trained_unix_ms": now_ms(),
                "result": &result,
            });
            write_atomic(
                &tmp.join("training.json"),
                provenance.to_string().as_bytes(),
            )
            .map_err(|e| e.to_string())?;
            sync_dir(&tmp)
        };
        // Check it the way a restart would read it (finite weights, shapes,
        // config) while it is still invisible; only a whole, loadable version
        // is renamed into place. Serving what was read back from disk means a
        // restart serves the very same weights.
        let checked = write().and_then(|()| {
            if self.config.fault == Some(PublishFault::TornWeights) {
                let f = tmp.join("model.safetensors");
                let len = std::fs::metadata(&f).map_err(|e| e.to_string())?.len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .and_then(|w| w.set_len(len / 2))
                    .map_err(|e| e.to_string())?;
            }
            load_version_dir(&tmp, self.registry.device())
                .map_err(|e| format!("the written version does not load: {e}"))
        });
        let (loaded, meta) = match checked {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                undo_root();
                return Err(e);
            }
        };
        if self.config.fault == Some(PublishFault::BeforeRename) {
            return Err("injected fault after writing, before the rename".into());
        }
        let dir = root.join(version.to_string());
        std::fs::rename(&tmp, &dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            undo_root();
            format!("rename to {}: {e}", dir.display())
        })?;
        sync_dir(&root)?;
        self.registry
            .insert(name, version, loaded, meta)
            .map_err(|e| e.to_string())?;
        tracing::info!(job = %job_id, model = %name, version, "published a trained model version");
        Ok(result)
    }
}

/// A watcher's view of one job.
pub struct JobWatch {
    job: Arc<Job>,
    /// Changes at every event and state change.
    pub rx: watch::Receiver<u64>,
}

impl JobWatch {
    /// Progress events recorded so far.
    pub fn recorded(&self) -> usize {
        lock(&self.job.events).len()
    }

    /// Recorded events from index `from` on, and the job's status.
    pub fn read(&self, from: usize) -> (Vec<ProgressEvent>, JobStatus) {
        let events = lock(&self.job.events).get(from..).unwrap_or(&[]).to_vec();
        (events, self.job.status())
    }
}

fn progress_event(p: &Progress, elapsed: Duration) -> ProgressEvent {
    let total = (p.epochs * p.batches_per_epoch).max(1);
    let done = (p.epoch * p.batches_per_epoch + p.batch + 1).min(total);
    let secs = elapsed.as_secs_f64();
    ProgressEvent {
        epoch: p.epoch + 1,
        epochs: p.epochs,
        batch: p.batch + 1,
        batches_per_epoch: p.batches_per_epoch,
        train_loss: p.train_loss,
        validation_loss: p.val_loss,
        grad_norm: (!p.epoch_done).then_some(p.grad_norm),
        sequences_per_second: p.seqs_per_sec,
        learning_rate: p.learning_rate,
        elapsed_seconds: secs,
        eta_seconds: secs * (total - done) as f64 / done as f64,
        epoch_done: p.epoch_done,
    }
}

/// Worst-case memory of one mini-batch: `batch_size` rows padded to the
/// longest sequence, each padded step holding its input, target and output
/// rows and, per layer, the BPTT cache and gradients (about 12 H).
fn batch_bytes(c: &ModelConfig, data: &[Sequence], batch_size: usize) -> u64 {
    let longest = data.iter().map(|s| s.len(c.input_size)).max().unwrap_or(0) as u64;
    let rows = batch_size.min(data.len()) as u64;
    let per_step =
        4 * (c.input_size + 2 * c.output_dim() + c.num_layers * 12 * c.hidden_size) as u64;
    rows.saturating_mul(longest).saturating_mul(per_step)
}

/// The result recorded in the `training.json` of a version of `model` that
/// job `job_id` published, if one did.
fn published_by(model_dir: &Path, model: &str, job_id: &str) -> Option<JobResult> {
    #[derive(Deserialize)]
    struct Provenance {
        job_id: String,
        result: Option<JobResult>,
    }
    if !valid_model_name(model) {
        return None;
    }
    let root = model_dir.join(model);
    for entry in std::fs::read_dir(&root).ok()?.flatten() {
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(bytes) = std::fs::read(entry.path().join("training.json")) else {
            continue;
        };
        let Ok(p) = serde_json::from_slice::<Provenance>(&bytes) else {
            continue;
        };
        if p.job_id == job_id {
            let mut result = p.result.unwrap_or(JobResult {
                model: model.to_string(),
                version,
                epochs_run: 0,
                final_train_loss: 0.0,
                best_validation_loss: None,
                stopped_early: false,
            });
            result.version = version;
            return Some(result);
        }
    }
    None
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("fsync {}: {e}", dir.display()))
}

/// Deletes `<model-dir>/<name>/.tmp-*` folders: publications cut off by a
/// crash before their rename.
fn clean_temporaries(model_dir: &Path) {
    let Ok(models) = std::fs::read_dir(model_dir) else {
        return;
    };
    for model in models.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        let Ok(entries) = std::fs::read_dir(&model) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => {
                        tracing::warn!(folder = %e.path().display(), "removed a half-written model version")
                    }
                    Err(err) => {
                        tracing::warn!(folder = %e.path().display(), error = %err, "could not remove a half-written model version")
                    }
                }
            }
        }
    }
}

/// Lowers this thread's scheduling priority (Linux: niceness is per thread).
fn set_nice(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice != 0 {
        // SAFETY: plain syscalls on the calling thread.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}
