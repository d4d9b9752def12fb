//! Training jobs: a queue, runner threads apart from the serving workers,
//! progress that watchers can replay, durable job records, and publication
//! of each result as a new model version.
//!
//! Lifecycle: `submit` checks everything it can (name, hyper-parameters, the
//! target model, the whole dataset, limits) and queues the job, or refuses
//! it; a runner thread takes it, trains it with [`crate::model::train`] and
//! publishes the result through [`Registry::publish`] (crash-safe; see
//! `registry/publish.rs`).
//!
//! Replicas: every server sharing a model directory shares its `.jobs/`
//! records. A job belongs to the replica that queued it (`JobStatus::replica`),
//! which rewrites its record every [`TrainingConfig::heartbeat`]; the record
//! is the job's state for every other replica (Get, List, Watch by polling
//! it, Cancel through a `<id>.cancel` marker the owner picks up). A record
//! left QUEUED or RUNNING whose heartbeat is older than the lease (3
//! heartbeats) was cut off by a stop or a crash: the next replica to start,
//! or any live one at its next check, marks it INTERRUPTED (or SUCCEEDED, if
//! its version was already published). A live replica's job is never touched.
//!
//! - `mod.rs`: the [`Training`] handle and what the RPCs call;
//! - `job.rs`: a job's types and the checks a request passes;
//! - `error.rs`: [`TrainingError`];
//! - `records.rs`: the `.jobs/` records: heartbeats, leases, reconciliation;
//! - `remote.rs`: jobs of other replicas, read from their records;
//! - `runner.rs`: the runner threads, progress recording, publication.

mod error;
mod job;
mod records;
mod remote;
mod runner;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::registry::{valid_model_name, Registry};
use super::EngineError;
use crate::model::{GruModel, ModelConfig};

pub use super::registry::PublishFault;
pub use error::TrainingError;
use job::{check_new_model, check_request, Job, JobInput};
pub use job::{sequence_bytes, JobRequest, JobResult, JobState, JobStatus, JobTarget};
use records::JOBS_DIR;
pub use remote::JobWatch;

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
    /// How often a replica rewrites the records of its queued and running
    /// jobs. Another replica takes a job whose record is older than three of
    /// these (the lease) for cut off; so a few seconds, far above a disk
    /// write's worst case and the replicas' clock skew.
    pub heartbeat: Duration,
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
            heartbeat: Duration::from_secs(2),
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

/// A record older than this many heartbeats belongs to no live replica.
const LEASE_HEARTBEATS: u32 = 3;

/// This server's id on its job records: host, pid and a random part, so a
/// restarted process (even one that got the same pid) is a new replica.
fn new_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
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
    /// This server's id on the records of the jobs it runs.
    replica: String,
    /// The jobs this server queued since it started, in creation order
    /// (other jobs are known by their records only).
    jobs: Mutex<BTreeMap<(i64, String), Arc<Job>>>,
    queue: Mutex<Queue>,
    /// Runners wait on it for jobs.
    wake: Condvar,
    /// The heartbeat thread sleeps on it (with the queue's lock) between beats.
    beat: Condvar,
    runners: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Training {
    /// Reconciles job records cut off by a stop or crash, and starts the
    /// runner threads and the heartbeat.
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
            replica: new_replica_id(),
            jobs: Mutex::new(BTreeMap::new()),
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                stopping: false,
            }),
            wake: Condvar::new(),
            beat: Condvar::new(),
            runners: Mutex::new(Vec::new()),
        });
        tracing::info!(replica = %training.replica, "training jobs are recorded under this replica id");
        training.reconcile_records();
        training.prune_records();
        let mut runners = lock(&training.runners);
        let t = training.clone();
        let handle = std::thread::Builder::new()
            .name("train-heartbeat".into())
            .spawn(move || t.heartbeat_loop())
            .map_err(|e| EngineError::Internal(format!("spawn training heartbeat thread: {e}")))?;
        runners.push(handle);
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

    /// This server's id on its job records.
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    fn lease(&self) -> Duration {
        self.config.heartbeat * LEASE_HEARTBEATS
    }

    /// A job this server queued; None for other replicas' (and unknown) ids.
    fn find_local(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.jobs)
            .values()
            .find(|j| lock(&j.status).job_id == id)
            .cloned()
    }

    /// A job of this server, or else its record (another replica's, or one
    /// from before this server started).
    fn find(&self, id: &str) -> Result<Found, EngineError> {
        super::ids::check_id("job_id", id)?;
        if let Some(job) = self.find_local(id) {
            return Ok(Found::Local(job));
        }
        match self.read_record(id) {
            Some(status) => Ok(Found::Record(Box::new(status))),
            None => Err(TrainingError::JobNotFound(id.to_string()).into()),
        }
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
            replica: self.replica.clone(),
            heartbeat_unix_ms: now_ms(),
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

    /// A job of any replica sharing the model directory.
    pub fn get(&self, id: &str) -> Result<JobStatus, EngineError> {
        match self.find(id)? {
            Found::Local(job) => Ok(self.with_position(&job)),
            Found::Record(status) => Ok(*status),
        }
    }

    /// The jobs this server queued since it started, oldest first (its
    /// metrics; other replicas report their own).
    pub fn list(&self) -> Vec<JobStatus> {
        let jobs: Vec<_> = lock(&self.jobs).values().cloned().collect();
        jobs.iter().map(|j| self.with_position(j)).collect()
    }

    /// Every job of every replica sharing the model directory, oldest
    /// first: the records, with this server's own jobs as it knows them now.
    pub fn list_all(&self) -> Vec<JobStatus> {
        let mut all: BTreeMap<(i64, String), JobStatus> = self
            .read_records()
            .into_iter()
            .map(|s| ((s.created_unix_ms, s.job_id.clone()), s))
            .collect();
        for s in self.list() {
            all.insert((s.created_unix_ms, s.job_id.clone()), s);
        }
        all.into_values().collect()
    }

    /// Cancels a queued job at once, or a running one at its next batch
    /// (the returned state is then still RUNNING; watch for the end). A job
    /// of another replica is cancelled by that replica at its next heartbeat.
    pub fn cancel(&self, id: &str) -> Result<JobStatus, EngineError> {
        let job = match self.find(id)? {
            Found::Local(job) => job,
            Found::Record(status) => return self.cancel_remote(*status),
        };
        self.cancel_local(&job)?;
        Ok(self.with_position(&job))
    }

    fn cancel_local(&self, job: &Arc<Job>) -> Result<(), EngineError> {
        let was_queued = {
            let mut queue = lock(&self.queue);
            let before = queue.waiting.len();
            queue.waiting.retain(|j| !Arc::ptr_eq(j, job));
            queue.waiting.len() != before
        };
        if was_queued {
            self.finish(
                job,
                JobState::Cancelled,
                "cancelled while queued".into(),
                None,
            );
        } else {
            let (id, state) = {
                let s = lock(&job.status);
                (s.job_id.clone(), s.state)
            };
            if state.is_final() {
                return Err(TrainingError::AlreadyEnded { id, state }.into());
            }
            job.cancel.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Follows a job of any replica: for WatchTraining.
    pub fn watch(&self, id: &str) -> Result<JobWatch, EngineError> {
        Ok(match self.find(id)? {
            Found::Local(job) => JobWatch::local(job),
            Found::Record(status) => JobWatch::record(self.record_path(id), self.lease(), *status),
        })
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
        self.beat.notify_all();
        let runners: Vec<_> = lock(&self.runners).drain(..).collect();
        for r in runners {
            let _ = r.join();
        }
    }
}

/// Where a job id was found.
enum Found {
    /// A job this server queued.
    Local(Arc<Job>),
    /// Only its record: another replica's job, or an older one.
    Record(Box<JobStatus>),
}
