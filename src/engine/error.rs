//! The engine's errors, named by what went wrong in the domain; each carries
//! the values its message names. `src/service` maps each to one gRPC code.

use std::path::PathBuf;

use super::{ids, training};
use crate::model::ModelError;

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
    /// A message without its start step to a session restored from a
    /// checkpoint after a crash (see `SessionData::unconfirmed`).
    #[error("session '{}' is at step {at}; it was recovered from a checkpoint after its server stopped without handing it over (a crash), so steps sent after that may be lost: send this message with its start step (gru.v1 start_step, Triton sequence_step), replaying from step {at} what was sent since", ids::clip(.session))]
    StepIndexUnconfirmed { session: String, at: u64 },
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
    /// A session this replica does not hold, while the shared session store
    /// that may hold it cannot be reached: retry (here or elsewhere).
    #[error("session '{}' is not held by this replica and the session store ({store}) is unreachable: {error}; retry", ids::clip(.session))]
    StoreUnavailable {
        session: String,
        store: String,
        error: String,
    },
    /// A stored session whose model version this replica does not serve.
    #[error("session '{}' runs on model '{}' version {version}, which this replica does not serve", ids::clip(.session), ids::clip(.model))]
    SessionModelNotServed {
        session: String,
        model: String,
        version: u64,
    },
    /// The session store cannot be opened (its folder, its URL).
    #[error("session store: {0}")]
    SessionStore(String),
    /// A `resume_snapshot` that cannot be a session (its text says why).
    #[error("resume_snapshot: {0}")]
    BadSnapshot(String),
    /// The model folder cannot be read.
    #[error("model dir {}: {error}", .dir.display())]
    ModelDirUnreadable { dir: PathBuf, error: std::io::Error },
    /// Inputs the model itself refused (its own text).
    #[error("{0}")]
    ModelInput(String),
    /// A fault of the server itself (tensor errors, a failed thread spawn).
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Training(#[from] training::TrainingError),
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
            EngineError::StepIndexUnconfirmed { .. } => "step_index_unconfirmed",
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
            EngineError::StoreUnavailable { .. } => "session_store_unavailable",
            EngineError::SessionModelNotServed { .. } => "session_model_not_served",
            EngineError::BadSnapshot(_) => "bad_snapshot",
            EngineError::SessionStore(_) => "session_store",
            EngineError::ModelDirUnreadable { .. } => "model_dir_unreadable",
            EngineError::ModelInput(_) => "model_input",
            EngineError::Internal(_) => "internal",
            EngineError::Training(e) => e.label(),
        }
    }
}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Input(m) | ModelError::Shape(m) => EngineError::ModelInput(m),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Internal(format!("tensor: {e}"))
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
            EngineError::StoreUnavailable {
                session: s(),
                store: "redis://r:6379".into(),
                error: "refused".into(),
            },
            EngineError::SessionModelNotServed {
                session: s(),
                model: "m".into(),
                version: 3,
            },
            EngineError::BadSnapshot("format 9".into()),
            EngineError::SessionStore("file:/x: denied".into()),
            EngineError::StepIndexUnconfirmed {
                session: s(),
                at: 4,
            },
        ];
        let mut labels: Vec<&str> = all.iter().map(EngineError::label).collect();
        labels.sort_unstable();
        let n = labels.len();
        labels.dedup();
        assert_eq!(labels.len(), n, "labels repeat: {labels:?}");

        // The texts the variants replaced, as they were built by format!.
        let said = |i: usize| all[i].to_string();
        assert_eq!(said(6), "inputs[3] = NaN is not finite");
        assert_eq!(
            said(7),
            "initial_state: expected 2 layers × 8 hidden = 16 values, got 1 × 8 with 7 values"
        );
        assert_eq!(
            said(15),
            "session 's1' is at step 4; this message starts at step 5 (only a retry of the last message, which started at none, can be repeated)"
        );
        assert_eq!(
            said(18),
            "model 'm/1' has 8 requests queued (the limit); retry later"
        );
    }
}
