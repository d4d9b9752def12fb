//! `gru.v1.TrainingService`: proto ↔ the engine's training jobs. Data is
//! checked here row by row as it arrives (shapes against the target model,
//! the byte limit), and whole by the engine before the job is queued.

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{matrix, pb};
use crate::engine::training::{sequence_bytes, JobRequest, JobState, JobStatus, JobTarget};
use crate::engine::Engine;
use crate::model::train::{OptimizerKind, Progress, Schedule, SeqTarget, Sequence, TrainConfig};
use crate::model::{ModelConfig, ResetMode, Task};
use pb::training_service_server::TrainingService;

pub struct TrainingServiceImpl {
    engine: Arc<OnceLock<Engine>>,
    shutdown: CancellationToken,
}

impl TrainingServiceImpl {
    pub fn new(engine: Arc<OnceLock<Engine>>, shutdown: CancellationToken) -> Self {
        TrainingServiceImpl { engine, shutdown }
    }

    fn engine(&self) -> Result<Engine, Status> {
        self.engine
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("models are still loading; retry shortly"))
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

fn reset_mode_in(v: i32) -> Result<ResetMode, Status> {
    match pb::ResetMode::try_from(v) {
        Ok(pb::ResetMode::Unspecified | pb::ResetMode::AfterMatmul) => Ok(ResetMode::AfterMatmul),
        Ok(pb::ResetMode::BeforeMatmul) => Ok(ResetMode::BeforeMatmul),
        Err(_) => Err(invalid(format!("new_model.reset_mode: unknown value {v}"))),
    }
}

fn task_in(v: i32) -> Result<Task, Status> {
    match pb::Task::try_from(v) {
        Ok(pb::Task::Unspecified | pb::Task::Regression) => Ok(Task::Regression),
        Ok(pb::Task::ClassifyPerStep) => Ok(Task::ClassifyPerStep),
        Ok(pb::Task::ClassifyLast) => Ok(Task::ClassifyLast),
        Err(_) => Err(invalid(format!("new_model.task: unknown value {v}"))),
    }
}

fn target_in(req: &pb::StartTrainingRequest) -> Result<JobTarget, Status> {
    Ok(match &req.new_model {
        Some(spec) => {
            if req.base_version != 0 {
                return Err(invalid(
                    "base_version is for fine-tuning; a new_model trains from scratch",
                ));
            }
            let mut config = ModelConfig::new(
                spec.input_size as usize,
                spec.hidden_size as usize,
                spec.num_layers as usize,
            )
            .with_reset_mode(reset_mode_in(spec.reset_mode)?)
            .with_task(task_in(spec.task)?);
            if spec.output_size > 0 {
                config = config.with_head(spec.output_size as usize);
            }
            JobTarget::New {
                config,
                description: spec.description.clone(),
            }
        }
        None => JobTarget::FineTune {
            base_version: (req.base_version != 0).then_some(req.base_version),
        },
    })
}

/// The request's hyper-parameters with the defaults the proto documents.
fn hyper_in(h: Option<pb::Hyperparameters>) -> Result<TrainConfig, Status> {
    let h = h.unwrap_or_default();
    let d = TrainConfig::default();
    let or = |v: u32, default: usize| if v == 0 { default } else { v as usize };
    let optimizer = match pb::Optimizer::try_from(h.optimizer) {
        Ok(pb::Optimizer::Unspecified | pb::Optimizer::Adamw) => OptimizerKind::default(),
        Ok(pb::Optimizer::Sgd) => {
            if !(0.0..1.0).contains(&h.momentum) {
                return Err(invalid(format!(
                    "hyperparameters.momentum {} must be in [0, 1)",
                    h.momentum
                )));
            }
            OptimizerKind::Sgd {
                momentum: h.momentum,
            }
        }
        Err(_) => {
            return Err(invalid(format!(
                "hyperparameters.optimizer: unknown value {}",
                h.optimizer
            )))
        }
    };
    let schedule = match pb::LearningRateSchedule::try_from(h.schedule) {
        Ok(pb::LearningRateSchedule::Unspecified | pb::LearningRateSchedule::Constant) => {
            Schedule::Constant
        }
        Ok(pb::LearningRateSchedule::Cosine) => Schedule::Cosine {
            min_lr: h.min_learning_rate,
        },
        Ok(pb::LearningRateSchedule::Step) => Schedule::Step {
            every_epochs: or(h.step_every_epochs, 1),
            gamma: if h.step_gamma == 0.0 {
                0.1
            } else {
                h.step_gamma
            },
        },
        Err(_) => {
            return Err(invalid(format!(
                "hyperparameters.schedule: unknown value {}",
                h.schedule
            )))
        }
    };
    Ok(TrainConfig {
        epochs: or(h.epochs, d.epochs),
        batch_size: or(h.batch_size, d.batch_size),
        learning_rate: if h.learning_rate == 0.0 {
            d.learning_rate
        } else {
            h.learning_rate
        },
        optimizer,
        schedule,
        weight_decay: h.weight_decay,
        clip_norm: match h.clip_norm {
            None => d.clip_norm,
            Some(0.0) => None,
            Some(c) => Some(c),
        },
        tbptt_window: (h.tbptt_window != 0).then_some(h.tbptt_window as usize),
        validation_fraction: h.validation_fraction,
        patience: (h.patience != 0).then_some(h.patience as usize),
        seed: h.seed,
    })
}

fn hyper_out(c: &TrainConfig) -> pb::Hyperparameters {
    let mut h = pb::Hyperparameters {
        epochs: c.epochs as u32,
        batch_size: c.batch_size as u32,
        learning_rate: c.learning_rate,
        weight_decay: c.weight_decay,
        clip_norm: Some(c.clip_norm.unwrap_or(0.0)),
        tbptt_window: c.tbptt_window.unwrap_or(0) as u32,
        validation_fraction: c.validation_fraction,
        patience: c.patience.unwrap_or(0) as u32,
        seed: c.seed,
        ..Default::default()
    };
    match c.optimizer {
        OptimizerKind::AdamW { .. } => h.optimizer = pb::Optimizer::Adamw as i32,
        OptimizerKind::Sgd { momentum } => {
            h.optimizer = pb::Optimizer::Sgd as i32;
            h.momentum = momentum;
        }
    }
    match c.schedule {
        Schedule::Constant => h.schedule = pb::LearningRateSchedule::Constant as i32,
        Schedule::Cosine { min_lr } => {
            h.schedule = pb::LearningRateSchedule::Cosine as i32;
            h.min_learning_rate = min_lr;
        }
        Schedule::Step {
            every_epochs,
            gamma,
        } => {
            h.schedule = pb::LearningRateSchedule::Step as i32;
            h.step_every_epochs = every_epochs as u32;
            h.step_gamma = gamma;
        }
    }
    h
}

/// One wire sequence → the training core's, checking its shapes against the
/// target model. `k` is its index in the whole upload (messages name it).
fn sequence_in(k: usize, s: pb::TrainingSequence, c: &ModelConfig) -> Result<Sequence, Status> {
    let (rows, cols, inputs) = matrix(&format!("sequences[{k}].inputs"), s.inputs)?;
    if rows == 0 || cols != c.input_size {
        return Err(invalid(format!(
            "sequences[{k}].inputs: {rows} rows × {cols} cols; the model takes ≥ 1 rows of {} features",
            c.input_size
        )));
    }
    let o = c.output_dim();
    let labels_unexpected = |what: &str| {
        invalid(format!(
            "sequences[{k}].{what} is set, but the model's task is {:?}",
            c.task
        ))
    };
    let target = match c.task {
        Task::Regression => {
            if !s.labels.is_empty() {
                return Err(labels_unexpected("labels"));
            }
            let (r, tc, v) = matrix(&format!("sequences[{k}].targets"), s.targets)?;
            if r != rows || tc != o {
                return Err(invalid(format!(
                    "sequences[{k}].targets: {r} rows × {tc} cols; expected {rows} rows (one per input step) × {o} outputs"
                )));
            }
            SeqTarget::Values(v)
        }
        Task::ClassifyPerStep | Task::ClassifyLast => {
            if s.targets.is_some() {
                return Err(labels_unexpected("targets"));
            }
            let want = if c.task == Task::ClassifyLast {
                1
            } else {
                rows
            };
            if s.labels.len() != want {
                return Err(invalid(format!(
                    "sequences[{k}].labels has {} entries; the task {:?} takes {want} for {rows} steps",
                    s.labels.len(),
                    c.task
                )));
            }
            if c.task == Task::ClassifyLast {
                SeqTarget::Class(s.labels[0])
            } else {
                SeqTarget::Classes(s.labels)
            }
        }
    };
    let weights = (!s.step_weights.is_empty()).then_some(s.step_weights);
    Ok(Sequence {
        inputs,
        target,
        weights,
    })
}

/// A job's request and data as they arrive, checked as they come.
struct Upload {
    model: String,
    target: JobTarget,
    hyper: TrainConfig,
    config: ModelConfig,
    data: Vec<Sequence>,
    bytes: u64,
    max_bytes: u64,
}

impl Upload {
    fn new(
        engine: &Engine,
        req: pb::StartTrainingRequest,
    ) -> Result<(Upload, Vec<pb::TrainingSequence>), Status> {
        let target = target_in(&req)?;
        let config = engine.training().target_config(&req.model, &target)?;
        let hyper = hyper_in(req.hyperparameters)?;
        Ok((
            Upload {
                model: req.model,
                target,
                hyper,
                config,
                data: Vec::new(),
                bytes: 0,
                max_bytes: engine.training().max_dataset_bytes(),
            },
            req.sequences,
        ))
    }

    fn add(&mut self, seqs: Vec<pb::TrainingSequence>) -> Result<(), Status> {
        for s in seqs {
            let seq = sequence_in(self.data.len(), s, &self.config)?;
            self.bytes += sequence_bytes(&seq);
            if self.bytes > self.max_bytes {
                return Err(Status::resource_exhausted(format!(
                    "the dataset passed {} bytes at sequence {}; at most {} are accepted",
                    self.bytes,
                    self.data.len(),
                    self.max_bytes
                )));
            }
            self.data.push(seq);
        }
        Ok(())
    }

    /// Checks the whole dataset and queues the job (off the async runtime:
    /// checking a large dataset and initialising a model take a while).
    async fn submit(self, engine: Engine) -> Result<Response<pb::StartTrainingResponse>, Status> {
        let n = self.data.len();
        let req = JobRequest {
            model: self.model,
            target: self.target,
            hyperparameters: self.hyper,
            data: self.data,
        };
        let (job_id, position) = tokio::task::spawn_blocking(move || engine.training().submit(req))
            .await
            .map_err(|e| Status::internal(format!("submit task: {e}")))??;
        Ok(Response::new(pb::StartTrainingResponse {
            job_id,
            queue_position: position as u32,
            num_sequences: n as u64,
        }))
    }
}

fn progress_out(p: &Progress) -> pb::TrainingProgress {
    pb::TrainingProgress {
        epoch: p.epoch as u32,
        epochs: p.epochs as u32,
        batch: p.batch as u32,
        batches_per_epoch: p.batches_per_epoch as u32,
        train_loss: p.train_loss,
        validation_loss: p.validation_loss,
        grad_norm: p.grad_norm,
        sequences_per_second: p.sequences_per_second,
        learning_rate: p.learning_rate,
        elapsed_seconds: p.elapsed_seconds,
        eta_seconds: p.eta_seconds,
        epoch_done: p.epoch_done,
    }
}

fn job_out(s: &JobStatus) -> pb::TrainingJob {
    let state = match s.state {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
        JobState::Interrupted => pb::JobState::Interrupted,
    };
    pb::TrainingJob {
        job_id: s.job_id.clone(),
        model: s.model.clone(),
        base_version: s.base_version,
        state: state as i32,
        queue_position: s.queue_position as u32,
        num_sequences: s.num_sequences,
        dataset_bytes: s.dataset_bytes,
        hyperparameters: Some(hyper_out(&s.hyperparameters)),
        progress: s.progress.as_ref().map(progress_out),
        result: s.result.as_ref().map(|r| pb::TrainingResult {
            model: r.model.clone(),
            version: r.version,
            epochs_run: r.epochs_run as u32,
            final_train_loss: r.final_train_loss,
            best_validation_loss: r.best_validation_loss,
            stopped_early: r.stopped_early,
        }),
        error: s.error.clone(),
        created_unix_ms: s.created_unix_ms,
        started_unix_ms: s.started_unix_ms,
        finished_unix_ms: s.finished_unix_ms,
    }
}

fn job_event(s: &JobStatus) -> pb::TrainingEvent {
    pb::TrainingEvent {
        event: Some(pb::training_event::Event::Job(job_out(s))),
    }
}

#[tonic::async_trait]
impl TrainingService for TrainingServiceImpl {
    async fn start_training(
        &self,
        request: Request<pb::StartTrainingRequest>,
    ) -> Result<Response<pb::StartTrainingResponse>, Status> {
        let engine = self.engine()?;
        let (mut upload, seqs) = Upload::new(&engine, request.into_inner())?;
        upload.add(seqs)?;
        upload.submit(engine).await
    }

    async fn upload_training(
        &self,
        request: Request<Streaming<pb::TrainingUpload>>,
    ) -> Result<Response<pb::StartTrainingResponse>, Status> {
        let engine = self.engine()?;
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| {
            invalid("the upload is empty: its first message must carry `request`")
        })?;
        let req = first
            .request
            .ok_or_else(|| invalid("the first upload message must carry `request`"))?;
        let (mut upload, seqs) = Upload::new(&engine, req)?;
        upload.add(seqs)?;
        upload.add(first.sequences)?;
        let mut n = 1;
        while let Some(msg) = stream.message().await? {
            if msg.request.is_some() {
                return Err(invalid(format!(
                    "upload message {n} carries `request`; only the first may"
                )));
            }
            upload.add(msg.sequences)?;
            n += 1;
        }
        upload.submit(engine).await
    }

    type WatchTrainingStream = ReceiverStream<Result<pb::TrainingEvent, Status>>;

    async fn watch_training(
        &self,
        request: Request<pb::WatchTrainingRequest>,
    ) -> Result<Response<Self::WatchTrainingStream>, Status> {
        let engine = self.engine()?;
        let req = request.into_inner();
        // Any replica sharing the model directory: another's job is followed
        // through its record (engine/training/remote.rs).
        let mut watch = engine.training().watch(&req.job_id)?;
        let mut cursor = if req.from_start { 0 } else { watch.recorded() };
        let (tx, rx) = mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut last_state = None;
            loop {
                let (events, status) = watch.read(&mut cursor);
                let mut out = Vec::with_capacity(events.len() + 2);
                if last_state.is_none() {
                    out.push(job_event(&status));
                }
                out.extend(events.iter().map(|e| pb::TrainingEvent {
                    event: Some(pb::training_event::Event::Progress(progress_out(e))),
                }));
                // The final state is always the last event.
                if status.state.is_final()
                    || (last_state.is_some() && last_state != Some(status.state))
                {
                    out.push(job_event(&status));
                }
                last_state = Some(status.state);
                for e in out {
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                if status.state.is_final() {
                    return;
                }
                tokio::select! {
                    more = watch.changed() => if !more { return },
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => {
                        let msg = if watch.is_local() {
                            "the server is shutting down; the job is interrupted"
                        } else {
                            "the server is shutting down; the job runs on another replica: watch it there"
                        };
                        let _ = tx.send(Err(Status::unavailable(msg))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_training_job(
        &self,
        request: Request<pb::GetTrainingJobRequest>,
    ) -> Result<Response<pb::TrainingJob>, Status> {
        let s = self
            .engine()?
            .training()
            .get(&request.into_inner().job_id)?;
        Ok(Response::new(job_out(&s)))
    }

    async fn list_training_jobs(
        &self,
        _request: Request<pb::ListTrainingJobsRequest>,
    ) -> Result<Response<pb::ListTrainingJobsResponse>, Status> {
        // Every replica's jobs: the records in the shared model directory.
        let jobs = self.engine()?.training().list_all();
        Ok(Response::new(pb::ListTrainingJobsResponse {
            jobs: jobs.iter().map(job_out).collect(),
        }))
    }

    async fn cancel_training(
        &self,
        request: Request<pb::CancelTrainingRequest>,
    ) -> Result<Response<pb::TrainingJob>, Status> {
        let s = self
            .engine()?
            .training()
            .cancel(&request.into_inner().job_id)?;
        Ok(Response::new(job_out(&s)))
    }
}
