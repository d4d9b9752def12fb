//! What can go wrong with a training job, named by what happened; the
//! service's one error table picks the gRPC code.

use super::JobState;
use crate::engine::ids;
use crate::engine::registry::PublishError;
use crate::model::train::HyperparameterError;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("model name '{}' must be non-empty, use [A-Za-z0-9._-] and not start with '.'", ids::clip(.0))]
    BadModelName(String),
    /// The new model's spec is not a model (its config check failed).
    #[error("new_model: {0}")]
    BadNewModel(ModelError),
    #[error("new_model has {parameters} parameters; this server trains at most {max}")]
    ModelTooLarge { parameters: usize, max: usize },
    /// `field` is outside its bounds; the rule names the value.
    #[error("hyperparameters: invalid input: {0}")]
    BadHyperparameter(HyperparameterError),
    #[error("the dataset is {bytes} bytes; at most {max} are accepted")]
    DatasetTooLarge { bytes: u64, max: u64 },
    /// A sequence that does not fit the model (names the sequence and field).
    #[error("{0}")]
    BadDataset(ModelError),
    #[error("a mini-batch of {sequences} sequences padded to the longest ({steps} steps) needs about {need_bytes} bytes; this server allows {limit_bytes} (--max-training-batch-bytes): use a smaller batch_size or shorter sequences")]
    BatchTooLarge {
        sequences: usize,
        steps: usize,
        need_bytes: u64,
        limit_bytes: u64,
    },
    #[error("{queued} training jobs are already queued (limit {capacity}); retry later")]
    QueueFull { queued: usize, capacity: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("training job '{}' not found", ids::clip(.0))]
    JobNotFound(String),
    #[error("job '{id}' already ended ({state:?})")]
    AlreadyEnded { id: String, state: JobState },
    /// Trained, but the version could not be written or served; recorded as
    /// the job's error, never an RPC's.
    #[error("publishing: {0}")]
    PublishFailed(PublishError),
}

impl TrainingError {
    /// A stable short name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TrainingError::BadModelName(_) => "training_bad_model_name",
            TrainingError::BadNewModel(_) => "training_bad_new_model",
            TrainingError::ModelTooLarge { .. } => "training_model_too_large",
            TrainingError::BadHyperparameter(_) => "training_bad_hyperparameter",
            TrainingError::DatasetTooLarge { .. } => "training_dataset_too_large",
            TrainingError::BadDataset(_) => "training_bad_dataset",
            TrainingError::BatchTooLarge { .. } => "training_batch_too_large",
            TrainingError::QueueFull { .. } => "training_queue_full",
            TrainingError::ShuttingDown => "training_shutting_down",
            TrainingError::JobNotFound(_) => "job_not_found",
            TrainingError::AlreadyEnded { .. } => "training_job_already_ended",
            TrainingError::PublishFailed(_) => "training_publish_failed",
        }
    }
}
