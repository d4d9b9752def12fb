//! One StepStream carrying its sessions in a closed loop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gru_serve::service::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::drive::Client;

/// The measured window, shared by every stream.
#[derive(Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

#[derive(Default)]
pub struct StreamOutcome {
    pub latencies_us: Vec<u32>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl StreamOutcome {
    /// The stream's next reply; None when it ended (why is recorded).
    pub async fn next_reply<T>(&mut self, replies: &mut tonic::Streaming<T>) -> Option<T> {
        match tokio::time::timeout(Duration::from_secs(30), replies.message()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                self.errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("stream ended: {e}"));
                None
            }
            Err(_) => {
                self.first_error
                    .get_or_insert_with(|| "no reply for 30 s".into());
                None
            }
        }
    }
}

/// One stream: its sessions in a closed loop. Replies come in request order,
/// so a FIFO of (session, send time) pairs them with their requests.
pub async fn run_stream(
    mut c: Client,
    sessions: Vec<String>,
    k: usize,
    cols: usize,
    inputs: Arc<Vec<f32>>,
    w: Window,
    out_cols: Arc<AtomicU64>,
) -> StreamOutcome {
    let mut o = StreamOutcome::default();
    if sessions.is_empty() {
        return o;
    }
    let (tx, rx) = mpsc::channel::<pb::StepRequest>(sessions.len() + 1);
    let mut next_rid: u64 = 0;
    let msg = |s: usize, rid: u64| pb::StepRequest {
        session_id: sessions[s].clone(),
        inputs: Some(pb::Matrix {
            rows: k as u32,
            cols: cols as u32,
            values: inputs.as_ref().clone(),
        }),
        request_id: rid,
        ..Default::default()
    };
    let mut inflight: VecDeque<(usize, u64, Instant)> = VecDeque::with_capacity(sessions.len());
    for s in 0..sessions.len() {
        let _ = tx.try_send(msg(s, next_rid));
        inflight.push_back((s, next_rid, Instant::now()));
        next_rid += 1;
    }
    let mut replies = match c.step_stream(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            o.errors += 1;
            o.first_error = Some(format!("StepStream: {e}"));
            return o;
        }
    };
    let mut tx = Some(tx);
    while let Some(m) = o.next_reply(&mut replies).await {
        let now = Instant::now();
        let Some((s, rid, sent)) = inflight.pop_front() else {
            o.first_error
                .get_or_insert_with(|| "a reply with nothing in flight".into());
            break;
        };
        if m.request_id != rid {
            o.first_error.get_or_insert_with(|| {
                format!(
                    "replies out of order: got request_id {} expecting {rid}",
                    m.request_id
                )
            });
        }
        let in_window = sent >= w.start && now <= w.end;
        match m.result {
            Some(pb::step_response::Result::Ok(r)) => {
                if in_window {
                    o.ok += 1;
                    o.latencies_us
                        .push((now - sent).as_micros().min(u32::MAX as u128) as u32);
                }
                if let Some(mx) = r.outputs {
                    out_cols.store(mx.cols as u64, Ordering::Relaxed);
                }
            }
            Some(pb::step_response::Result::Error(e)) => {
                if in_window {
                    o.errors += 1;
                }
                o.first_error
                    .get_or_insert_with(|| format!("step error {}: {}", e.code, e.message));
            }
            None => {
                o.errors += 1;
            }
        }
        if now < w.end {
            if let Some(t) = &tx {
                if t.send(msg(s, next_rid)).await.is_err() {
                    break;
                }
                inflight.push_back((s, next_rid, Instant::now()));
                next_rid += 1;
            }
        } else if inflight.is_empty() {
            // Everything answered: end the request stream; the server then ends its side.
            tx = None;
        }
    }
    drop(tx);
    o
}
