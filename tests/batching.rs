#![cfg(feature = "grpc")]
//! Cross-session batching, asserted from the model worker's own statistics
//! (`WorkerStats::batch_size_hist` in `src/engine/batcher.rs`), not inferred
//! from outputs or from a batch count.
//!
//! Where the expectations come from:
//! - **Batches hold several sessions with different k**: nine sessions, three
//!   each sending k = 1, 2 and 5 rows per message. A batch holds at most one
//!   message per session, so a batch of four or more of them must mix at
//!   least two values of k (pigeonhole); the gate message (below, k = 1024)
//!   differs from all three, so a batch holding it mixes k too.
//! - **Batching changes nothing**: each session's outputs and final state
//!   equal what Predict gives its whole sequence alone (≤ 1e-6; batched and
//!   lone forwards may round differently in the last bit).
//!
//! How batching is provoked without sleeps: every round sends, on one
//! stream, a long "gate" message (1024 steps) for a session of its own and
//! then one message per session. The stream reader queues them on the worker
//! in arrival order without waiting for replies, so whatever arrives while
//! the worker is busy (with the gate, if it took the gate alone) is taken
//! as one batch. Rounds repeat until the statistics show a batch of ≥ 4
//! sessions, within a deadline: a worker that runs one message at a time
//! fails the test.

use std::sync::atomic::Ordering;

use gru_serve::engine::batcher::WorkerStats;
use gru_serve::service::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod common;
use common::server::*;
// The small model of `small_repo`: I = 3, H = 8, 2 layers, head O = 2.
use common::sessions::{hidden, open, H, I, L, O};

/// Rows per message of each session class; three sessions per class.
const KS: [usize; 3] = [1, 2, 5];
const PER_K: usize = 3;
const SESSIONS: usize = KS.len() * PER_K;
/// Rows of the gate message that keeps the worker busy while the rest queue.
const GATE_K: usize = 1024;
/// Rounds to run at least, so every session's sequence spans several messages.
const MIN_ROUNDS: usize = 3;

/// Batches formed so far of ≥ 2 and of ≥ 4 sessions (histogram buckets
/// [2, 4), [4, 8), …).
fn multi_session_batches(stats: &WorkerStats) -> (u64, u64) {
    let bucket = |b: usize| stats.batch_size_hist[b].load(Ordering::Relaxed);
    let hist = &stats.batch_size_hist;
    (
        (1..hist.len()).map(bucket).sum(),
        (2..hist.len()).map(bucket).sum(),
    )
}

/// Nine sessions with k = 1, 2, 5 through one worker: the worker's statistics
/// show batches that held ≥ 4 of them (hence mixed k), and every session's
/// outputs and final state equal Predict on its own whole sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_mixed_k_share_batches_and_get_their_own_outputs() {
    let repo = small_repo();
    let server = TestServer::serving(repo.path()).await;
    let stats = server
        .engine()
        .model("m", None)
        .unwrap()
        .worker
        .stats
        .clone();
    let mut c = server.client();
    let gate = open(&mut c, None).await;
    let mut ids = Vec::new();
    let mut h0s = Vec::new();
    for s in 0..SESSIONS {
        let h0 = (s % 2 == 0).then(|| rand_vec(L * H, 100 + s as u64));
        ids.push(open(&mut c, h0.clone()).await);
        h0s.push(h0);
    }
    let k_of = |s: usize| KS[s % KS.len()];
    let (tx, rx) = mpsc::channel(64);
    let mut replies = c
        .step_stream(ReceiverStream::new(rx))
        .await
        .expect("open step stream")
        .into_inner();
    let mut inputs: Vec<Vec<f32>> = vec![Vec::new(); SESSIONS];
    let mut got: Vec<Vec<f32>> = vec![Vec::new(); SESSIONS];
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut round = 0;
    loop {
        let seed = 1000 * (round as u64 + 1);
        tx.send(step_req(&gate, rand_vec(GATE_K * I, seed), 0))
            .await
            .unwrap();
        let mut sent = Vec::new();
        for (s, id) in ids.iter().enumerate() {
            let x = rand_vec(k_of(s) * I, seed + 1 + s as u64);
            tx.send(step_req(id, x.clone(), s as u64 + 1))
                .await
                .unwrap();
            sent.push(x);
        }
        for expect in 0..=SESSIONS {
            let r = common::sessions::reply(&mut replies).await;
            assert_eq!(r.request_id, expect as u64, "replies in request order");
            let ok = match r.result {
                Some(pb::step_response::Result::Ok(ok)) => ok,
                other => panic!("round {round}, message {expect}: {other:?}"),
            };
            if expect > 0 {
                let s = expect - 1;
                let done = inputs[s].len() / I;
                assert_eq!(
                    (ok.start_step, ok.next_step),
                    (done as u64, (done + k_of(s)) as u64)
                );
                got[s].extend(ok.outputs.expect("outputs").values);
                inputs[s].extend(&sent[s]);
            }
        }
        round += 1;
        let (_, four_or_more) = multi_session_batches(&stats);
        if round >= MIN_ROUNDS && four_or_more > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {round} rounds no batch held 4 or more sessions (batch sizes by power of two: {:?}): the worker does not batch across sessions",
            stats
                .batch_size_hist
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        );
    }
    drop(tx);
    let (two_or_more, four_or_more) = multi_session_batches(&stats);
    eprintln!(
        "{round} rounds; batches {}, of ≥ 2 sessions {two_or_more}, of ≥ 4 {four_or_more}",
        stats.batches.load(Ordering::Relaxed)
    );
    assert!(two_or_more >= four_or_more && four_or_more >= 1);

    for s in 0..SESSIONS {
        let r = c
            .predict(pb::PredictRequest {
                model: "m".into(),
                sequences: vec![pb::PredictSequence {
                    inputs: Some(matrix(inputs[s].len() / I, I, inputs[s].clone())),
                    initial_state: h0s[s].clone().map(hidden),
                }],
                return_states: true,
                ..Default::default()
            })
            .await
            .expect("predict")
            .into_inner();
        let want = r.outputs.into_iter().next().expect("one output");
        let want_y = want.outputs.expect("outputs").values;
        assert_eq!(want_y.len(), inputs[s].len() / I * O);
        assert_close(
            &format!("session {s} (k = {}) outputs", k_of(s)),
            &got[s],
            &want_y,
        );
        let st = c
            .get_session_state(pb::GetSessionStateRequest {
                session_id: ids[s].clone(),
            })
            .await
            .expect("session state")
            .into_inner()
            .state
            .expect("state");
        assert_eq!(st.step_index as usize, inputs[s].len() / I);
        assert_close(
            &format!("session {s} final state"),
            &st.hidden.expect("hidden").values,
            &want.final_state.expect("final state").values,
        );
    }
    server.stop().await;
}
