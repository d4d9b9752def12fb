//! Training jobs: a queue, runner threads apart from the serving workers,
//! progress that watchers can replay, durable job records, and publication
//! of each result as a new model version.
//!
//! Lifecycle: `submit` checks everything it can (name, hyper-parameters, the
//! target model, the whole dataset, limits) and queues the job, or refuses
//! it; a runner thread takes it, trains it with [`crate::model::train`] and
//! publishes the result through [`Registry::publish`] (crash-safe; see
//! `registry/publish.rs`). A job record found QUEUED or RUNNING at start was
//! cut off by a stop and becomes INTERRUPTED (or SUCCEEDED, if its version
//! was already published).
//!
//! - `mod.rs`: the [`Training`] handle and what the RPCs call;
//! - `job.rs`: a job's types and the checks a request passes;
//! - `error.rs`: [`TrainingError`];
//! - `records.rs`: the `.jobs/` records, reconciled at start;
//! - `runner.rs`: the runner threads, progress recording, publication.

mod error;
mod job;
mod records;
mod runner;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::registry::{valid_model_name, Registry};
use super::EngineError;
use crate::model::train::Progress;
use crate::model::{GruModel, ModelConfig};

pub use super::registry::PublishFault;
pub use error::TrainingError;
use job::{check_new_model, check_request, Job, JobInput};
pub use job::{sequence_bytes, JobRequest, JobResult, JobState, JobStatus, JobTarget};
use records::JOBS_DIR;

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

impl Training {
    /// Reloads job records (reconciling cut-off ones) and starts the runner
    /// threads.
    pub fn start(
        config: TrainingConfig,
        model_dir: &Path,
        registry: Arc<Registry>,
    ) -> Result<Arc<Training>, EngineError> {
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

    fn find(&self, id: &str) -> Result<Arc<Job>, EngineError> {
        super::ids::check_id("job_id", id)?;
        lock(&self.jobs)
            .values()
            .find(|j| lock(&j.status).job_id == id)
            .cloned()
            .ok_or_else(|| TrainingError::JobNotFound(id.to_string()).into())
    }

    /// The config a job on `model` would train: the new spec, or the served
    /// base version's. Lets the service check data rows as they arrive.
    pub fn target_config(
        &self,
        model: &str,
        target: &JobTarget,
    ) -> Result<ModelConfig, EngineError> {
        if !valid_model_name(model) {
            return Err(TrainingError::BadModelName(model.to_string()).into());
        }
        match target {
            JobTarget::New { config, .. } => {
                check_new_model(&self.config, config)?;
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
        let bytes = check_request(&self.config, &config, &req)?;
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
                return Err(TrainingError::ShuttingDown.into());
            }
            if queue.waiting.len() >= self.config.max_queued_jobs {
                return Err(TrainingError::QueueFull {
                    queued: queue.waiting.len(),
                    capacity: self.config.max_queued_jobs,
                }
                .into());
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
                return Err(TrainingError::AlreadyEnded {
                    id: id.to_string(),
                    state,
                }
                .into());
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
    pub fn read(&self, from: usize) -> (Vec<Progress>, JobStatus) {
        let events = lock(&self.job.events).get(from..).unwrap_or(&[]).to_vec();
        (events, self.job.status())
    }
}
