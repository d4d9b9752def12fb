//! Sessions and StepStreams on the small model (`server::small_repo`), shared
//! by sessions.rs, refusals.rs and operations.rs: the model's sizes, request
//! builders, and bounded waits on stream replies.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use gru_serve::model::ModelConfig;
use gru_serve::service::pb;

use super::server::{matrix, Client, WAIT};

/// The small model most tests use: I = 3, H = 8, 2 layers, head O = 2.
pub const I: usize = 3;
pub const H: usize = 8;
pub const L: usize = 2;
pub const O: usize = 2;

pub fn small_config() -> ModelConfig {
    ModelConfig::new(I, H, L).with_head(O)
}

// ---------------------------------------------------------------- request helpers

/// A hidden state of the small model's shape (L × H).
pub fn hidden(values: Vec<f32>) -> pb::HiddenState {
    pb::HiddenState {
        num_layers: L as u32,
        hidden_size: H as u32,
        values,
    }
}

pub fn with_start(mut r: pb::StepRequest, start: u64) -> pb::StepRequest {
    r.start_step = start;
    r.has_start_step = true;
    r
}

pub fn ok_result(r: &pb::StepResponse) -> &pb::StepResult {
    match &r.result {
        Some(pb::step_response::Result::Ok(x)) => x,
        other => panic!("expected an ok step reply, got {other:?}"),
    }
}

pub fn outputs(r: &pb::StepResponse) -> Vec<f32> {
    ok_result(r).outputs.clone().expect("outputs").values
}

/// Opens a session on `m`, from `initial` when given.
pub async fn open(c: &mut Client, initial: Option<Vec<f32>>) -> String {
    c.open_session(pb::OpenSessionRequest {
        model: "m".into(),
        initial_state: initial.map(hidden),
        ..Default::default()
    })
    .await
    .expect("open session")
    .into_inner()
    .session_id
}

/// Predict for one sequence alone: (outputs, final state).
pub async fn predict_one(
    c: &mut Client,
    inputs: &[f32],
    initial: Option<Vec<f32>>,
) -> (Vec<f32>, Vec<f32>) {
    let r = c
        .predict(pb::PredictRequest {
            model: "m".into(),
            sequences: vec![pb::PredictSequence {
                inputs: Some(matrix(inputs.len() / I, I, inputs.to_vec())),
                initial_state: initial.map(hidden),
            }],
            return_states: true,
            ..Default::default()
        })
        .await
        .expect("predict")
        .into_inner();
    assert_eq!(r.outputs.len(), 1);
    let o = r.outputs.into_iter().next().unwrap();
    let y = o.outputs.expect("outputs");
    assert_eq!(y.cols as usize, O);
    assert_eq!(y.rows as usize, inputs.len() / I);
    (y.values, o.final_state.expect("final state").values)
}

pub async fn session_state(c: &mut Client, id: &str) -> pb::SessionState {
    c.get_session_state(pb::GetSessionStateRequest {
        session_id: id.into(),
    })
    .await
    .expect("get session state")
    .into_inner()
    .state
    .expect("state")
}

// ---------------------------------------------------------------- streams

/// Opens a StepStream whose request side stays open while `tx` lives.
pub async fn open_stream(
    c: &mut Client,
) -> (mpsc::Sender<pb::StepRequest>, Streaming<pb::StepResponse>) {
    let (tx, rx) = mpsc::channel(1024);
    let replies = c
        .step_stream(ReceiverStream::new(rx))
        .await
        .expect("open step stream")
        .into_inner();
    (tx, replies)
}

/// The next reply of a stream (bounded wait).
pub async fn next_reply(
    s: &mut Streaming<pb::StepResponse>,
) -> Result<Option<pb::StepResponse>, Status> {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("no stream reply within the wait")
}

pub async fn reply(s: &mut Streaming<pb::StepResponse>) -> pb::StepResponse {
    next_reply(s)
        .await
        .expect("stream reply")
        .expect("stream ended early")
}
