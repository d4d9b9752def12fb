//! The tonic service: proto ↔ engine, request validation, and the one
//! mapping from engine errors to gRPC status codes.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::engine::{
    Engine, EngineError, ExportedState, HiddenState, PredictSeq, Resume, ServedModel,
    StreamSessions,
};
use crate::model::{ResetMode, Task};

/// Generated from `proto/gru/v1/gru.proto` by build.rs; never edited.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("gru.v1");
    /// Hand-coded for speed, same wire format (build.rs `extern_path`).
    pub use super::matrix::Matrix;
    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/gru_descriptor.bin"));
}

pub mod auth;
mod matrix;
pub mod observe;
mod step;
mod stream;
pub mod training;
pub mod triton;

use pb::gru_service_server::GruService;
use step::{step_finish, step_submit, stream_error, Refused, SubmittedStep};

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        let msg = e.to_string();
        match e {
            EngineError::ModelNotFound(_)
            | EngineError::VersionNotFound { .. }
            | EngineError::SessionNotFound(_)
            | EngineError::SessionExpired { .. } => Status::not_found(msg),
            EngineError::BadId { .. }
            | EngineError::ModelRequired
            | EngineError::NotFinite { .. }
            | EngineError::StateShape { .. }
            | EngineError::ResumeWithInitial
            | EngineError::ResumeModelMismatch { .. }
            | EngineError::ResumeStepIndexTooLarge { .. }
            | EngineError::StepRowCount { .. }
            | EngineError::StepInputShape { .. }
            | EngineError::PredictSequenceCount { .. }
            | EngineError::PredictStepCount { .. }
            | EngineError::PredictInputShape { .. }
            | EngineError::BadSnapshot(_)
            | EngineError::ModelInput(_) => Status::invalid_argument(msg),
            EngineError::SessionKeyConflict { .. }
            | EngineError::StepIndexMismatch { .. }
            | EngineError::StepIndexUnconfirmed { .. }
            | EngineError::AlreadyAppliedReplyNotKept { .. }
            | EngineError::SessionModelNotServed { .. }
            | EngineError::StepIndexOverflow { .. } => Status::failed_precondition(msg),
            EngineError::SessionLimit { .. }
            | EngineError::QueueFull { .. }
            | EngineError::PredictTooLarge { .. } => Status::resource_exhausted(msg),
            EngineError::ShuttingDown
            | EngineError::WorkerStopped { .. }
            | EngineError::WorkerDroppedRequest { .. }
            | EngineError::StoreUnavailable { .. }
            | EngineError::SessionStore(_)
            | EngineError::ModelDirUnreadable { .. } => Status::unavailable(msg),
            EngineError::WorkerPanicked { .. } | EngineError::Internal(_) => Status::internal(msg),
            EngineError::Training(e) => {
                use crate::engine::training::TrainingError as T;
                match e {
                    T::BadModelName(_)
                    | T::BadNewModel(_)
                    | T::BadHyperparameter(_)
                    | T::BadDataset(_) => Status::invalid_argument(msg),
                    T::ModelTooLarge { .. }
                    | T::DatasetTooLarge { .. }
                    | T::BatchTooLarge { .. }
                    | T::QueueFull { .. } => Status::resource_exhausted(msg),
                    T::ShuttingDown => Status::unavailable(msg),
                    T::JobNotFound(_) => Status::not_found(msg),
                    T::AlreadyEnded { .. } => Status::failed_precondition(msg),
                    T::PublishFailed(_) => Status::internal(msg),
                }
            }
        }
    }
}

/// How many messages of one stream may be in flight at once (their replies
/// still come back in order). Lets one stream carrying many sessions fill a
/// batch, while bounding what one client can queue.
pub const STREAM_MAX_IN_FLIGHT: usize = 256;

pub use stream::ReplyStream;

pub struct GruServiceImpl {
    engine: Arc<OnceLock<Engine>>,
    shutdown: CancellationToken,
    streams: Arc<Semaphore>,
    /// A StepStream with no message for this long is ended (its sessions stay).
    stream_idle_timeout: std::time::Duration,
}

impl GruServiceImpl {
    pub fn new(
        engine: Arc<OnceLock<Engine>>,
        shutdown: CancellationToken,
        max_streams: usize,
        stream_idle_timeout: std::time::Duration,
    ) -> Self {
        GruServiceImpl {
            engine,
            shutdown,
            streams: Arc::new(Semaphore::new(max_streams)),
            stream_idle_timeout,
        }
    }

    fn engine(&self) -> Result<&Engine, Status> {
        self.engine
            .get()
            .ok_or_else(|| Status::unavailable("models are still loading; retry shortly"))
    }
}

fn version_arg(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

pub(crate) fn matrix(
    what: &str,
    m: Option<pb::Matrix>,
) -> Result<(usize, usize, Vec<f32>), Status> {
    let m = m.ok_or_else(|| Status::invalid_argument(format!("{what} is required")))?;
    let (r, c) = (m.rows as usize, m.cols as usize);
    if r.checked_mul(c) != Some(m.values.len()) {
        return Err(Status::invalid_argument(format!(
            "{what}: rows {r} × cols {c} ≠ {} values",
            m.values.len()
        )));
    }
    Ok((r, c, m.values))
}

fn out_matrix(rows: usize, cols: usize, values: Vec<f32>) -> pb::Matrix {
    pb::Matrix {
        rows: rows as u32,
        cols: cols as u32,
        values,
    }
}

fn hidden_out(h: HiddenState) -> pb::HiddenState {
    pb::HiddenState {
        num_layers: h.layers as u32,
        hidden_size: h.hidden as u32,
        values: h.values,
    }
}

fn hidden_in(h: pb::HiddenState) -> HiddenState {
    HiddenState {
        layers: h.num_layers as usize,
        hidden: h.hidden_size as usize,
        values: h.values,
    }
}

pub fn model_info(m: &ServedModel, versions: Vec<u64>) -> pb::ModelInfo {
    let c = m.model.config();
    pb::ModelInfo {
        name: m.name.clone(),
        version: m.version,
        versions,
        input_size: c.input_size as u32,
        hidden_size: c.hidden_size as u32,
        num_layers: c.num_layers as u32,
        output_size: c.output_dim() as u32,
        has_head: c.output_size.is_some(),
        reset_mode: match c.reset_mode {
            ResetMode::BeforeMatmul => pb::ResetMode::BeforeMatmul,
            ResetMode::AfterMatmul => pb::ResetMode::AfterMatmul,
        } as i32,
        task: match c.task {
            Task::Regression => pb::Task::Regression,
            Task::ClassifyPerStep => pb::Task::ClassifyPerStep,
            Task::ClassifyLast => pb::Task::ClassifyLast,
        } as i32,
        dtype: match c.dtype {
            crate::model::Precision::F32 => "f32",
            crate::model::Precision::F64 => "f64",
        }
        .into(),
        num_parameters: c.num_parameters() as u64,
        description: m.meta.description.clone(),
        source_format: m.meta.source_format.into(),
    }
}

fn session_key(req_key: String, metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    if !req_key.is_empty() {
        return Some(req_key);
    }
    metadata
        .get("x-session-key")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[tonic::async_trait]
impl GruService for GruServiceImpl {
    async fn list_models(
        &self,
        _req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let engine = self.engine()?;
        let models = engine
            .models()
            .into_iter()
            .map(|(m, versions)| model_info(&m, versions))
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn get_model(
        &self,
        req: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        let engine = self.engine()?;
        let req = req.into_inner();
        let m = engine.model(&req.model, version_arg(req.version))?;
        let versions = engine.versions(&m.name);
        Ok(Response::new(pb::GetModelResponse {
            model: Some(model_info(&m, versions)),
        }))
    }

    async fn predict(
        &self,
        req: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let engine = self.engine()?;
        let req = req.into_inner();
        let span =
            tracing::info_span!("predict", model = %req.model, sequences = req.sequences.len());
        let mut seqs = Vec::with_capacity(req.sequences.len());
        for (n, s) in req.sequences.into_iter().enumerate() {
            let (rows, _cols, values) = matrix(&format!("sequences[{n}].inputs"), s.inputs)?;
            let initial = s.initial_state.map(hidden_in);
            seqs.push(PredictSeq {
                inputs: values,
                len: rows,
                initial,
            });
        }
        let (sequences, started) = (seqs.len(), std::time::Instant::now());
        let out = engine
            .predict(&req.model, version_arg(req.version), seqs)
            .instrument(span)
            .await?;
        observe::record_predict(
            &out.model.name,
            out.model.version,
            sequences,
            started.elapsed(),
        );
        observe::note_model(&out.model.name, out.model.version);
        let c = out.model.model.config();
        let (o, l, h) = (c.output_dim(), c.num_layers, c.hidden_size);
        let outputs = out
            .outputs
            .into_iter()
            .zip(out.states)
            .map(|(y, s)| pb::PredictOutput {
                outputs: Some(out_matrix(y.len() / o, o, y)),
                final_state: req.return_states.then(|| {
                    hidden_out(HiddenState {
                        layers: l,
                        hidden: h,
                        values: s,
                    })
                }),
            })
            .collect();
        Ok(Response::new(pb::PredictResponse {
            model: out.model.name.clone(),
            version: out.model.version,
            outputs,
        }))
    }

    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let engine = self.engine()?;
        let owner = auth::tenant(&req);
        let (meta, _, r) = req.into_parts();
        let key = session_key(r.session_key.clone(), &meta);
        let resume = match (r.resume, r.resume_snapshot) {
            (Some(_), Some(_)) => {
                return Err(Status::invalid_argument(
                    "give either resume or resume_snapshot, not both",
                ))
            }
            (Some(s), None) => Some(Resume::State(ExportedState {
                model: s.model,
                version: s.version,
                step_index: s.step_index,
                hidden: hidden_in(s.hidden.unwrap_or_default()),
            })),
            (None, Some(snap)) => Some(Resume::Snapshot(snap)),
            (None, None) => None,
        };
        let (session, created) = engine
            .open_session(
                &r.model,
                version_arg(r.version),
                key,
                owner,
                r.initial_state.map(hidden_in),
                resume,
            )
            .await?;
        let step_index = session.lock().step_index;
        tracing::info!(session_id = %session.id, model = %session.model.name, version = session.model.version, created, "open session");
        if created {
            observe::record_session_opened(&session.model.name, session.model.version);
        }
        observe::note_model(&session.model.name, session.model.version);
        observe::note_session(&session.id);
        Ok(Response::new(pb::OpenSessionResponse {
            session_id: session.id.clone(),
            model: session.model.name.clone(),
            version: session.model.version,
            step_index,
            created,
            ttl_ms: engine.session_ttl().as_millis() as u64,
        }))
    }

    async fn step(
        &self,
        req: Request<pb::StepRequest>,
    ) -> Result<Response<pb::StepResponse>, Status> {
        let owner = auth::tenant(&req);
        let engine = self.engine()?;
        let req = req.into_inner();
        engine
            .ensure_session(&req.session_id, owner.as_deref())
            .await?;
        let submitted = step_submit(engine, owner.as_deref(), None, req).map_err(|r| r.status)?;
        Ok(Response::new(
            step_finish(submitted).await.map_err(|r| r.status)?,
        ))
    }

    type StepStreamStream = ReplyStream<pb::StepResponse>;

    async fn step_stream(
        &self,
        req: Request<Streaming<pb::StepRequest>>,
    ) -> Result<Response<Self::StepStreamStream>, Status> {
        let engine = self.engine()?.clone();
        // The permit lives in the stream's task: tower's concurrency limits
        // release theirs when this handler returns, which bounds nothing.
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("too many open streams; retry later"))?;
        let cancel = self.shutdown.clone();
        let owner = auth::tenant(&req);
        let mut inbound = req.into_inner();
        // In-order replies: the reader queues each message on its worker
        // and hands the pending reply to the response stream, which awaits
        // them in order as the transport asks for the next. No task per
        // message and no writer task: hyper's own task for the response is
        // the only one waiting, so a batch that answers many of this
        // stream's messages wakes it once (a reply not yet awaited has no
        // waker to call), and the replies go straight to the encoder. The
        // bounded queue caps the in-flight messages of this stream.
        enum Item {
            Step(SubmittedStep),
            Refused(Refused),
            End(Status),
        }
        let (order_tx, order_rx) = mpsc::channel::<Item>(STREAM_MAX_IN_FLIGHT);
        let reader_cancel = cancel.clone();
        let idle = self.stream_idle_timeout;
        tokio::spawn(async move {
            let mut seen = StreamSessions::default();
            loop {
                let next = stream::next_message(
                    &mut inbound,
                    &reader_cancel,
                    idle,
                    ("message", "sessions"),
                )
                .await;
                match next {
                    stream::Next::Message(m) => {
                        // Queue here, in arrival order, so one session's
                        // messages are applied in order; only the waits for
                        // the replies overlap. A session another replica
                        // holds is taken over first (a no-op without a
                        // shared store), before later messages are queued.
                        let item =
                            match engine.ensure_session(&m.session_id, owner.as_deref()).await {
                                Err(e) => Item::Refused(Refused {
                                    status: e.into(),
                                    session_id: m.session_id,
                                    request_id: m.request_id,
                                }),
                                Ok(()) => {
                                    match step_submit(&engine, owner.as_deref(), Some(&mut seen), m)
                                    {
                                        Ok(s) => Item::Step(s),
                                        Err(r) => Item::Refused(r),
                                    }
                                }
                            };
                        if order_tx.send(item).await.is_err() {
                            break;
                        }
                    }
                    stream::Next::Closed => break,
                    stream::Next::End(status) => {
                        let _ = order_tx.send(Item::End(status)).await;
                        break;
                    }
                }
            }
        });
        // The reader sends nothing after an End.
        Ok(Response::new(stream::replies(
            order_rx,
            permit,
            |item| async move {
                match item {
                    Item::Step(s) => Ok(step_finish(s).await.unwrap_or_else(stream_error)),
                    Item::Refused(r) => Ok(stream_error(r)),
                    Item::End(s) => Err(s),
                }
            },
        )))
    }

    async fn get_session_state(
        &self,
        req: Request<pb::GetSessionStateRequest>,
    ) -> Result<Response<pb::GetSessionStateResponse>, Status> {
        let engine = self.engine()?;
        let owner = auth::tenant(&req);
        let s = engine
            .session(&req.into_inner().session_id, owner.as_deref())
            .await?;
        let e = s.export();
        Ok(Response::new(pb::GetSessionStateResponse {
            state: Some(pb::SessionState {
                model: e.model,
                version: e.version,
                step_index: e.step_index,
                hidden: Some(hidden_out(e.hidden)),
            }),
            snapshot: Some(engine.snapshot(&s)),
        }))
    }

    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let engine = self.engine()?;
        let owner = auth::tenant(&req);
        let id = req.into_inner().session_id;
        observe::note_session(&id);
        let step_index = engine.close_session(&id, owner.as_deref()).await?;
        tracing::info!(session_id = %id, step_index, "close session");
        Ok(Response::new(pb::CloseSessionResponse { step_index }))
    }
}
