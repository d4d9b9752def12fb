//! `inference.GRPCInferenceService`: protobuf ↔ the core. Unary calls and
//! the stream share the core's two phases; the stream answers in request
//! order, puts each request's error in `error_message` and stays open.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::decode::ModelInferRequest;
use super::error::TritonError;
use super::pb::{self, grpc_inference_service_server::GrpcInferenceService};
use super::{InferResponse, Refused, Submit, Submitted, Triton};
use crate::service::auth::{self, Caller};
use crate::service::observe;
use crate::service::stream::{next_message, replies, Next, ReplyStream};

/// Requests of one stream in flight at once (replies still in order); the
/// same bound as gru.v1's StepStream.
pub const STREAM_MAX_IN_FLIGHT: usize = crate::service::STREAM_MAX_IN_FLIGHT;

pub struct TritonGrpc {
    core: Arc<Triton>,
    shutdown: CancellationToken,
    streams: Arc<Semaphore>,
    stream_idle_timeout: Duration,
}

impl TritonGrpc {
    /// `max_streams` and `stream_idle_timeout` as for gru.v1's StepStream.
    pub fn new(
        core: Arc<Triton>,
        shutdown: CancellationToken,
        max_streams: usize,
        stream_idle_timeout: Duration,
    ) -> Self {
        TritonGrpc {
            core,
            shutdown,
            streams: Arc::new(Semaphore::new(max_streams)),
            stream_idle_timeout,
        }
    }
}

/// The response: outputs always as raw little-endian bytes (tritonclient
/// reads numeric outputs only from `raw_output_contents`).
pub fn encode(r: InferResponse) -> pb::ModelInferResponse {
    let raw = r.outputs.iter().map(|t| t.raw().into()).collect();
    pb::ModelInferResponse {
        model_name: r.model,
        model_version: r.version.to_string(),
        id: r.id,
        parameters: Default::default(),
        outputs: r
            .outputs
            .into_iter()
            .map(|t| pb::model_infer_response::InferOutputTensor {
                name: t.name.to_string(),
                datatype: "FP32".into(),
                shape: t.shape.to_vec(),
                ..Default::default()
            })
            .collect(),
        raw_output_contents: raw,
    }
}

fn stream_reply(r: Result<InferResponse, Refused>) -> pb::ModelStreamInferResponse {
    match r {
        Ok(ok) => pb::ModelStreamInferResponse::reply(ok),
        Err(Refused { error, echo }) => {
            metrics::counter!("gru_stream_message_errors_total", "code" => observe::code_name(error.code())).increment(1);
            // The echo of the request (model, version asked, id).
            let head = pb::ModelInferResponse {
                model_name: echo.model,
                model_version: echo.version,
                id: echo.id,
                parameters: BTreeMap::from([(
                    "triton_final_response".to_string(),
                    pb::InferParameter {
                        parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(
                            true,
                        )),
                    },
                )]),
                ..Default::default()
            };
            pb::ModelStreamInferResponse::new(error.message, Some(head))
        }
    }
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented by gru-serve (see the README's Triton / KServe section)"
    ))
}

/// Model control needs an admin token when authentication is on.
fn require_admin<T>(req: &Request<T>, rpc: &str) -> Result<(), Status> {
    match req.extensions().get::<Caller>() {
        Some(c) if !c.admin => Err(Status::permission_denied(format!(
            "tenant '{}' may not call {rpc}: this needs an admin token",
            c.tenant
        ))),
        _ => Ok(()),
    }
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for TritonGrpc {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Rpc<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Rpc<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.core.not_ready().is_none(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Rpc<pb::ModelReadyResponse> {
        let r = req.into_inner();
        let ready = self.core.model_ready(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Rpc<pb::ServerMetadataResponse> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: super::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: super::EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Rpc<pb::ModelMetadataResponse> {
        let r = req.into_inner();
        let m = self.core.metadata(&r.name, &r.version)?;
        let t = |v: Vec<super::model::TensorMeta>| {
            v.into_iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name.into(),
                    datatype: t.datatype.into(),
                    shape: t.shape.to_vec(),
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform.into(),
            inputs: t(m.inputs),
            outputs: t(m.outputs),
        }))
    }

    async fn model_infer(&self, req: Request<ModelInferRequest>) -> Rpc<pb::ModelInferResponse> {
        let owner = auth::tenant(&req);
        let r = req.into_inner().into_request().map_err(TritonError::from)?;
        let submitted = self.core.submit(owner.as_deref(), r).await;
        let done = self
            .core
            .finish(submitted.map_err(TritonError::from)?)
            .await;
        let done = done.map_err(TritonError::from)?;
        Ok(Response::new(encode(done)))
    }

    type ModelStreamInferStream = ReplyStream<pb::ModelStreamInferResponse>;

    async fn model_stream_infer(
        &self,
        req: Request<Streaming<ModelInferRequest>>,
    ) -> Rpc<Self::ModelStreamInferStream> {
        // Held by the stream's replies for the stream's life.
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("too many open streams; retry later"))?;
        let owner = auth::tenant(&req);
        let inbound = req.into_inner();
        let (order_tx, order_rx) = mpsc::channel::<Item>(STREAM_MAX_IN_FLIGHT);
        tokio::spawn(pump(
            self.core.clone(),
            owner,
            inbound,
            order_tx,
            self.shutdown.clone(),
            self.stream_idle_timeout,
        ));
        // Replies in request order, as gru.v1's StepStream; the reader sends
        // nothing after an End.
        let core = self.core.clone();
        Ok(Response::new(replies(order_rx, permit, move |item| {
            let core = core.clone();
            async move {
                match item {
                    Item::Reply(Ok(s)) => Ok(stream_reply(core.finish(s).await)),
                    Item::Reply(Err(refused)) => Ok(stream_reply(Err(refused))),
                    Item::End(s) => Err(s),
                }
            }
        })))
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Rpc<pb::ModelConfigResponse> {
        let r = req.into_inner();
        let config = self.core.config(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Rpc<pb::ModelStatisticsResponse> {
        let r = req.into_inner();
        let model_stats = self.core.statistics(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Rpc<pb::RepositoryIndexResponse> {
        let _ = req;
        let models = self
            .core
            .index()?
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.into(),
                reason: String::new(),
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Rpc<pb::RepositoryModelLoadResponse> {
        require_admin(&req, "RepositoryModelLoad")?;
        self.core.load(&req.into_inner().model_name).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Rpc<pb::RepositoryModelUnloadResponse> {
        require_admin(&req, "RepositoryModelUnload")?;
        self.core.unload(&req.into_inner().model_name)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Rpc<pb::SystemSharedMemoryStatusResponse> {
        Err(unimplemented("SystemSharedMemoryStatus"))
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Rpc<pb::SystemSharedMemoryRegisterResponse> {
        Err(unimplemented("SystemSharedMemoryRegister"))
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Rpc<pb::SystemSharedMemoryUnregisterResponse> {
        Err(unimplemented("SystemSharedMemoryUnregister"))
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Rpc<pb::CudaSharedMemoryStatusResponse> {
        Err(unimplemented("CudaSharedMemoryStatus"))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Rpc<pb::CudaSharedMemoryRegisterResponse> {
        Err(unimplemented("CudaSharedMemoryRegister"))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Rpc<pb::CudaSharedMemoryUnregisterResponse> {
        Err(unimplemented("CudaSharedMemoryUnregister"))
    }

    async fn trace_setting(
        &self,
        _: Request<pb::TraceSettingRequest>,
    ) -> Rpc<pb::TraceSettingResponse> {
        Err(unimplemented("TraceSetting"))
    }

    async fn log_settings(
        &self,
        _: Request<pb::LogSettingsRequest>,
    ) -> Rpc<pb::LogSettingsResponse> {
        Err(unimplemented("LogSettings"))
    }
}

/// A queued request's reply, or the end of the stream.
// Nearly every item is a Reply: boxing it would allocate per request.
#[allow(clippy::large_enum_variant)]
enum Item {
    Reply(Result<Submitted, Refused>),
    End(Status),
}

/// The stream's reader: decodes and queues each request in arrival order
/// (a stream's requests for one sequence are applied in that order) and
/// hands it to the replies. Ends when the client does, at shutdown, or
/// after the idle timeout.
async fn pump(
    core: Arc<Triton>,
    owner: Option<String>,
    mut inbound: Streaming<ModelInferRequest>,
    order_tx: mpsc::Sender<Item>,
    cancel: CancellationToken,
    idle: Duration,
) {
    loop {
        let r = match next_message(&mut inbound, &cancel, idle, ("request", "sequences")).await {
            Next::Message(r) => r,
            Next::Closed => break,
            Next::End(status) => {
                let _ = order_tx.send(Item::End(status)).await;
                break;
            }
        };
        // Queued before the next request is read. The common case (a
        // sequence held here) is queued without waiting, so only START and
        // a sequence found through the store build the waiting future.
        let submitted = match r.into_request() {
            Ok(r) => match core.submit_now(owner.as_deref(), r) {
                Submit::Done(s) => s,
                Submit::Wait(w) => core.submit_wait(*w).await,
            },
            Err(e) => Err(e),
        };
        if order_tx.send(Item::Reply(submitted)).await.is_err() {
            break;
        }
    }
}
