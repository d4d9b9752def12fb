//! gru.v1's Step and StepStream messages, in two phases: [`step_submit`]
//! validates a message and queues it on its worker without waiting (so a
//! stream queues its messages in arrival order); [`step_finish`] awaits the
//! worker's reply and builds the response.

use std::sync::Arc;

use tonic::Status;
use tracing::Instrument;

use super::{hidden_out, matrix, observe, out_matrix, pb};
use crate::engine::{Engine, HiddenState, PendingStep, StepInput, StreamSessions};

/// A step message queued on its worker, awaiting the reply.
pub(super) struct SubmittedStep {
    session_id: String,
    request_id: u64,
    return_state: bool,
    k: usize,
    pending: PendingStep,
    span: tracing::Span,
    started: std::time::Instant,
}

/// A step message refused before it was queued, with what its stream reply names.
pub(super) struct Refused {
    pub(super) status: Status,
    pub(super) session_id: String,
    pub(super) request_id: u64,
}

/// Step and StepStream, phase 1: validate and queue the message on the
/// worker. Synchronous, so a stream queues its messages in arrival order.
/// A stream passes the sessions it has resolved (`seen`); a unary Step, None.
pub(super) fn step_submit(
    engine: &Engine,
    owner: Option<&str>,
    seen: Option<&mut StreamSessions>,
    req: pb::StepRequest,
) -> Result<SubmittedStep, Refused> {
    let pb::StepRequest {
        session_id,
        request_id,
        inputs,
        start_step,
        has_start_step,
        return_state,
        ..
    } = req;
    let refuse = |status: Status, session_id: String| Refused {
        status,
        session_id,
        request_id,
    };
    let (k, cols, values) = match matrix("inputs", inputs) {
        Ok(m) => m,
        Err(status) => return Err(refuse(status, session_id)),
    };
    let start = (has_start_step || start_step > 0).then_some(start_step);
    let span = tracing::debug_span!(
        "step",
        session_id = %session_id,
        steps = k,
        model = tracing::field::Empty,
        version = tracing::field::Empty
    );
    let started = std::time::Instant::now();
    let input = StepInput {
        inputs: values,
        rows: k,
        cols,
        start_step: start,
    };
    let pending = match span.in_scope(|| match seen {
        Some(seen) => engine.submit_stream_step(seen, &session_id, owner, input),
        None => engine.submit_step(&session_id, owner, input),
    }) {
        Ok(p) => p,
        Err(e) => return Err(refuse(e.into(), session_id)),
    };
    let served = &pending.session.model;
    if !span.is_disabled() {
        span.record("model", served.name.as_str());
        span.record("version", served.version);
    }
    observe::note_model(&served.name, served.version);
    observe::note_session(&pending.session.id);
    Ok(SubmittedStep {
        session_id,
        request_id,
        return_state,
        k,
        pending,
        span,
        started,
    })
}

/// Phase 2: await the worker's reply and build the response. The step
/// counter is the worker's (before the reply goes); the latency is per message.
pub(super) async fn step_finish(s: SubmittedStep) -> Result<pb::StepResponse, Refused> {
    let SubmittedStep {
        session_id,
        request_id,
        return_state,
        k,
        pending,
        span,
        started,
    } = s;
    let served = pending.session.model.clone();
    let waited = if span.is_disabled() {
        pending.wait().await
    } else {
        pending.wait().instrument(span.clone()).await
    };
    let reply = match waited {
        Ok(r) => r,
        Err(e) => {
            return Err(Refused {
                status: e.into(),
                session_id,
                request_id,
            })
        }
    };
    let elapsed = started.elapsed();
    served
        .worker
        .stats
        .metrics
        .step_latency
        .record(elapsed.as_secs_f64());
    tracing::debug!(
        parent: &span,
        elapsed_us = elapsed.as_micros() as u64,
        replayed = reply.replayed,
        "step done"
    );
    let c = served.model.config();
    let o = &reply.outcome;
    let out_cols = o.outputs.len() / k.max(1);
    let state = return_state.then(|| {
        hidden_out(HiddenState {
            layers: c.num_layers,
            hidden: c.hidden_size,
            values: o.state.clone(),
        })
    });
    // The outcome is shared with the session's kept reply (retries) unless
    // the budget had no room: then it is ours alone and moves, uncopied.
    let (outputs, start_step, next_step) = match Arc::try_unwrap(reply.outcome) {
        Ok(o) => (o.outputs, o.start_step, o.next_step),
        Err(o) => (o.outputs.clone(), o.start_step, o.next_step),
    };
    Ok(pb::StepResponse {
        session_id,
        request_id,
        result: Some(pb::step_response::Result::Ok(pb::StepResult {
            outputs: Some(out_matrix(k, out_cols, outputs)),
            start_step,
            next_step,
            state,
            replayed: reply.replayed,
        })),
    })
}

/// A stream's reply to a refused or failed message: the error, in its place.
pub(super) fn stream_error(r: Refused) -> pb::StepResponse {
    metrics::counter!("gru_stream_message_errors_total", "code" => observe::code_name(r.status.code())).increment(1);
    pb::StepResponse {
        session_id: r.session_id,
        request_id: r.request_id,
        result: Some(pb::step_response::Result::Error(pb::StepError {
            code: r.status.code() as i32,
            message: r.status.message().to_string(),
        })),
    }
}
