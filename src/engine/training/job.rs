//! A job's types: the request, its states, its status (what the RPCs report
//! and what is written to disk), its result, the in-memory job the runner
//! and watchers share, and the checks a request passes before it is queued.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::error::TrainingError;
use super::runner::batch_bytes;
use super::{lock, TrainingConfig};
use crate::model::train::{validate_dataset, Progress, SeqTarget, Sequence, TrainConfig};
use crate::model::{GruModel, ModelConfig};

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
    pub progress: Option<Progress>,
    pub result: Option<JobResult>,
    pub error: String,
    pub created_unix_ms: i64,
    pub started_unix_ms: i64,
    pub finished_unix_ms: i64,
    /// The replica that queued and runs the job (`host-pid-random`, new at
    /// each start of a server); empty in records written before replicas.
    #[serde(default)]
    pub replica: String,
    /// While queued or running: when `replica` last rewrote the record.
    /// Another replica treats the job as live until this is older than the
    /// lease (see `records.rs`); 0 = never, i.e. expired.
    #[serde(default)]
    pub heartbeat_unix_ms: i64,
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
    let targets = match &s.target {
        SeqTarget::Values(v) => v.len(),
        SeqTarget::Classes(c) => c.len(),
        SeqTarget::Class(_) => 1,
    };
    let weights = s.weights.as_ref().map_or(0, Vec::len);
    4 * (s.inputs.len() + targets + weights) as u64
}

/// A new model's spec: a valid config within the server's size limit.
pub(super) fn check_new_model(
    limits: &TrainingConfig,
    config: &ModelConfig,
) -> Result<(), TrainingError> {
    config.validate().map_err(TrainingError::BadNewModel)?;
    let parameters = config.num_parameters();
    if parameters > limits.max_model_parameters {
        return Err(TrainingError::ModelTooLarge {
            parameters,
            max: limits.max_model_parameters,
        });
    }
    Ok(())
}

/// A whole request against the model it trains: hyper-parameters, the
/// dataset (size, every sequence, one mini-batch's memory). Returns the
/// dataset's bytes.
pub(super) fn check_request(
    limits: &TrainingConfig,
    config: &ModelConfig,
    req: &JobRequest,
) -> Result<u64, TrainingError> {
    req.hyperparameters
        .check()
        .map_err(TrainingError::BadHyperparameter)?;
    let bytes: u64 = req.data.iter().map(sequence_bytes).sum();
    if bytes > limits.max_dataset_bytes {
        return Err(TrainingError::DatasetTooLarge {
            bytes,
            max: limits.max_dataset_bytes,
        });
    }
    validate_dataset(&req.data, config, limits.max_sequence_len)
        .map_err(TrainingError::BadDataset)?;
    let need_bytes = batch_bytes(config, &req.data, req.hyperparameters.batch_size);
    if need_bytes > limits.max_batch_bytes {
        return Err(TrainingError::BatchTooLarge {
            sequences: req.hyperparameters.batch_size.min(req.data.len()),
            steps: req
                .data
                .iter()
                .map(|s| s.len(config.input_size))
                .max()
                .unwrap_or(0),
            need_bytes,
            limit_bytes: limits.max_batch_bytes,
        });
    }
    Ok(bytes)
}

/// What the runner needs, taken out of the job when it starts.
pub(super) struct JobInput {
    pub base: GruModel,
    pub description: String,
    pub data: Vec<Sequence>,
}

pub(super) struct Job {
    pub status: Mutex<JobStatus>,
    /// Recorded progress (every epoch end; batches at most every
    /// [`RECORD_EVERY`]), for watchers that replay from the start.
    pub events: Mutex<Vec<Progress>>,
    /// Bumped at every event and state change; watchers wait on it.
    pub changed: watch::Sender<u64>,
    pub cancel: AtomicBool,
    pub input: Mutex<Option<JobInput>>,
}

impl Job {
    pub(super) fn new(status: JobStatus, input: Option<JobInput>) -> Arc<Job> {
        Arc::new(Job {
            status: Mutex::new(status),
            events: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            cancel: AtomicBool::new(false),
            input: Mutex::new(input),
        })
    }

    pub(super) fn status(&self) -> JobStatus {
        lock(&self.status).clone()
    }

    pub(super) fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}
