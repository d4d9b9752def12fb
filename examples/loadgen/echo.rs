//! `--echo`: the transport floor, measured with the same client in the same build.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_server::GruService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The transport floor: the same service trait, replies of the right shape, no math.
#[derive(Clone)]
pub struct Echo {
    pub hidden: usize,
    pub next_id: Arc<AtomicU64>,
}

fn echo_reply(hidden: usize, req: pb::StepRequest) -> pb::StepResponse {
    let k = req.inputs.as_ref().map_or(1, |m| m.rows.max(1)) as usize;
    pb::StepResponse {
        session_id: req.session_id,
        request_id: req.request_id,
        result: Some(pb::step_response::Result::Ok(pb::StepResult {
            outputs: Some(pb::Matrix {
                rows: k as u32,
                cols: hidden as u32,
                values: vec![0.0; k * hidden],
            }),
            start_step: req.start_step,
            next_step: req.start_step + k as u64,
            state: None,
            replayed: false,
        })),
    }
}

#[tonic::async_trait]
impl GruService for Echo {
    async fn list_models(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }
    async fn get_model(
        &self,
        _: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }
    async fn predict(
        &self,
        _: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }
    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::OpenSessionResponse {
            session_id: format!("echo-{id:016x}"),
            model: req.into_inner().model,
            version: 1,
            step_index: 0,
            created: true,
            ttl_ms: 600_000,
        }))
    }
    async fn step(
        &self,
        req: Request<pb::StepRequest>,
    ) -> Result<Response<pb::StepResponse>, Status> {
        Ok(Response::new(echo_reply(self.hidden, req.into_inner())))
    }

    type StepStreamStream = ReceiverStream<Result<pb::StepResponse, Status>>;

    async fn step_stream(
        &self,
        req: Request<Streaming<pb::StepRequest>>,
    ) -> Result<Response<Self::StepStreamStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let hidden = self.hidden;
        tokio::spawn(async move {
            loop {
                let out = match inbound.message().await {
                    Ok(Some(m)) => Ok(echo_reply(hidden, m)),
                    Ok(None) => break,
                    Err(s) => Err(s),
                };
                let end = out.is_err();
                if tx.send(out).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
    async fn get_session_state(
        &self,
        _: Request<pb::GetSessionStateRequest>,
    ) -> Result<Response<pb::GetSessionStateResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }
    async fn close_session(
        &self,
        _: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        Ok(Response::new(pb::CloseSessionResponse { step_index: 0 }))
    }
}
