#![cfg(feature = "grpc")]
//! The gRPC server end to end: the real `gru_serve::server::run` on
//! 127.0.0.1:0, driven through the generated client.
//!
//! Where the expectations come from:
//! - **The contract** is `proto/gru/v1/gru.proto`: a session's outputs are
//!   what the stateless Predict gives for the same inputs (same initial
//!   state); StepStream replies come in request order; `start_step` gives
//!   exactly-once retries; errors carry the documented gRPC codes.
//! - **Batching changes nothing**: `engine/batcher.rs` runs whatever is
//!   waiting as one padded batch; each session must still get exactly what it
//!   would get alone. Batched and lone forwards may round differently in the
//!   last bit, so values are compared within 1e-6 (the models are small and
//!   values are O(1), so a real bug is off by far more).
//! - **Refusals name what is wrong**: `EngineError`'s docs say messages name
//!   what was wrong and the values involved; each refusal test asserts the
//!   code and the named field/value.
//! - **Every test ends with a clean shutdown**: `run()` must return `Ok`
//!   within a timeout once the shutdown future resolves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gru_serve::engine::{Engine, EngineConfig, EngineError, OpenParams, SessionStore};
use gru_serve::model::{ModelConfig, ResetMode};
use gru_serve::service::pb;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod common;
use common::server::*;

/// The small model most tests use: I = 3, H = 8, 2 layers, head O = 2.
const I: usize = 3;
const H: usize = 8;
const L: usize = 2;
const O: usize = 2;

fn small_config() -> ModelConfig {
    ModelConfig::new(I, H, L).with_head(O)
}

/// Copies a repository tree file by file (same model files, another folder).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

// ---------------------------------------------------------------- request helpers

fn hidden(values: Vec<f32>) -> pb::HiddenState {
    pb::HiddenState {
        num_layers: L as u32,
        hidden_size: H as u32,
        values,
    }
}

/// A step message of `k` rows of the small model's inputs.
fn step_req(session: &str, inputs: &[f32], request_id: u64) -> pb::StepRequest {
    pb::StepRequest {
        session_id: session.into(),
        inputs: Some(matrix(inputs.len() / I, I, inputs.to_vec())),
        request_id,
        ..Default::default()
    }
}

fn with_start(mut r: pb::StepRequest, start: u64) -> pb::StepRequest {
    r.start_step = start;
    r.has_start_step = true;
    r
}

fn ok_result(r: &pb::StepResponse) -> &pb::StepResult {
    match &r.result {
        Some(pb::step_response::Result::Ok(x)) => x,
        other => panic!("expected an ok step reply, got {other:?}"),
    }
}

fn outputs(r: &pb::StepResponse) -> Vec<f32> {
    ok_result(r).outputs.clone().expect("outputs").values
}

async fn open(c: &mut Client, initial: Option<Vec<f32>>) -> String {
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
async fn predict_one(
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

async fn session_state(c: &mut Client, id: &str) -> pb::SessionState {
    c.get_session_state(pb::GetSessionStateRequest {
        session_id: id.into(),
    })
    .await
    .expect("get session state")
    .into_inner()
    .state
    .expect("state")
}

/// Opens a StepStream whose request side stays open while `tx` lives.
async fn open_stream(
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
async fn next_reply(
    s: &mut Streaming<pb::StepResponse>,
) -> Result<Option<pb::StepResponse>, Status> {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("no stream reply within the wait")
}

async fn reply(s: &mut Streaming<pb::StepResponse>) -> pb::StepResponse {
    next_reply(s)
        .await
        .expect("stream reply")
        .expect("stream ended early")
}

// ---------------------------------------------------------------- tests

/// StepStream ≡ Predict: a session opened with a non-zero initial state and
/// fed messages of k = 1, 3, 2, 1 rows gives, row for row, Predict's outputs
/// for the whole 7-step sequence from the same initial state (≤ 1e-6); the
/// state returned with the last message and GetSessionState's hidden state
/// equal Predict's final state; start/next step indices count the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_stream_matches_predict() {
    let dir = small_repo();
    let server = TestServer::serving(dir.path()).await;
    let mut c = server.client();
    let h0 = rand_vec(L * H, 11);
    assert!(h0.iter().any(|&v| v != 0.0));
    let inputs = rand_vec(7 * I, 12);
    let sid = open(&mut c, Some(h0.clone())).await;

    let (tx, mut rx) = open_stream(&mut c).await;
    let mut got = Vec::new();
    let mut row = 0;
    for (n, k) in [1usize, 3, 2, 1].into_iter().enumerate() {
        let mut r = step_req(&sid, &inputs[row * I..(row + k) * I], n as u64 + 1);
        r.return_state = n == 3;
        tx.send(r).await.unwrap();
        let rep = reply(&mut rx).await;
        assert_eq!(rep.session_id, sid);
        assert_eq!(rep.request_id, n as u64 + 1);
        let res = ok_result(&rep);
        assert_eq!(
            (res.start_step, res.next_step),
            (row as u64, (row + k) as u64)
        );
        assert!(!res.replayed);
        let m = res.outputs.as_ref().unwrap();
        assert_eq!((m.rows as usize, m.cols as usize), (k, O));
        got.extend_from_slice(&m.values);
        row += k;
        if n == 3 {
            let st = res.state.as_ref().expect("state asked for");
            assert_eq!((st.num_layers, st.hidden_size), (L as u32, H as u32));
            let (_, want_h) = predict_one(&mut c, &inputs, Some(h0.clone())).await;
            assert_close("returned state vs Predict final state", &st.values, &want_h);
        }
    }
    drop(tx);
    assert!(next_reply(&mut rx).await.unwrap().is_none(), "clean end");

    let (want, want_h) = predict_one(&mut c, &inputs, Some(h0.clone())).await;
    assert_close("streamed outputs vs Predict", &got, &want);
    // And the zero-state Predict is different: the initial state was used.
    let (zero, _) = predict_one(&mut c, &inputs, None).await;
    assert!(
        got.iter().zip(&zero).any(|(a, b)| (a - b).abs() > 1e-3),
        "initial_state made no difference"
    );
    let st = session_state(&mut c, &sid).await;
    assert_eq!(st.step_index, 7);
    assert_eq!((st.model.as_str(), st.version), ("m", 1));
    assert_close(
        "GetSessionState vs Predict final state",
        &st.hidden.unwrap().values,
        &want_h,
    );
    server.stop().await;
}

/// 64 sessions stepping at once (half over unary Step, half each over its own
/// StepStream; a barrier releases every round together so the worker batches
/// them, with k varying 1..=3 per message so batches are padded) each get
/// exactly what Predict gives their sequence alone (≤ 1e-6), outputs and
/// final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_get_what_they_get_alone() {
    const N: usize = 64;
    const ROUNDS: usize = 5;
    let dir = small_repo();
    let server = TestServer::serving(dir.path()).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for s in 0..N {
        let mut c = server.client();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let ks: Vec<usize> = (0..ROUNDS).map(|j| 1 + (s + j) % 3).collect();
            let total: usize = ks.iter().sum();
            let inputs = rand_vec(total * I, 1000 + s as u64);
            let h0 = (s % 2 == 0).then(|| rand_vec(L * H, 2000 + s as u64));
            let sid = open(&mut c, h0.clone()).await;
            let mut stream = if s % 2 == 1 {
                Some(open_stream(&mut c).await)
            } else {
                None
            };
            let mut got = Vec::new();
            let mut row = 0;
            for (j, &k) in ks.iter().enumerate() {
                let req = step_req(&sid, &inputs[row * I..(row + k) * I], j as u64);
                barrier.wait().await;
                let rep = match &mut stream {
                    Some((tx, rx)) => {
                        tx.send(req).await.unwrap();
                        reply(rx).await
                    }
                    None => c.step(req).await.expect("step").into_inner(),
                };
                assert_eq!(rep.session_id, sid);
                let res = ok_result(&rep);
                assert_eq!(
                    (res.start_step, res.next_step),
                    (row as u64, (row + k) as u64)
                );
                got.extend(outputs(&rep));
                row += k;
            }
            let st = session_state(&mut c, &sid).await;
            (inputs, h0, got, st)
        }));
    }
    let mut c = server.client();
    for (s, t) in tasks.into_iter().enumerate() {
        let (inputs, h0, got, st) = tokio::time::timeout(WAIT, t)
            .await
            .expect("session task timed out")
            .expect("session task");
        let (want, want_h) = predict_one(&mut c, &inputs, h0).await;
        assert_close(&format!("session {s} outputs"), &got, &want);
        assert_eq!(st.step_index as usize, inputs.len() / I);
        assert_close(
            &format!("session {s} final state"),
            &st.hidden.unwrap().values,
            &want_h,
        );
    }
    server.stop().await;
}

/// One stream carrying three sessions, 4 rounds of 24 interleaved messages,
/// each round sent before its replies are read (so many are in flight at
/// once, several per session): replies come in request order (request_id and
/// session_id echoed), each session's messages are applied in order (step
/// indices, and outputs equal to Predict on its concatenated inputs), and
/// session C, which uses start_step on every message, is never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_many_sessions_in_order() {
    let dir = small_repo();
    let server = TestServer::serving(dir.path()).await;
    let mut c = server.client();
    let ids = [
        open(&mut c, None).await,
        open(&mut c, Some(rand_vec(L * H, 5))).await,
        open(&mut c, None).await,
    ];
    let h0s = [None, Some(rand_vec(L * H, 5)), None];
    // Schedule: (session, k), interleaved, with runs of the same session;
    // sent in rounds of 24 messages, each round's replies read after it.
    const ROUND: usize = 24;
    let mut schedule = Vec::new();
    for n in 0..4 * ROUND {
        let s = [0, 1, 0, 2, 2, 1, 0, 0][n % 8];
        schedule.push((s, 1 + n % 3));
    }
    let totals: Vec<usize> = (0..3)
        .map(|s| schedule.iter().filter(|x| x.0 == s).map(|x| x.1).sum())
        .collect();
    let inputs: Vec<Vec<f32>> = (0..3)
        .map(|s| rand_vec(totals[s] * I, 300 + s as u64))
        .collect();

    let (tx, mut rx) = open_stream(&mut c).await;
    let mut rows = [0usize; 3];
    let mut got: [Vec<f32>; 3] = Default::default();
    for (round, chunk) in schedule.chunks(ROUND).enumerate() {
        let mut expect = Vec::new();
        for (j, &(s, k)) in chunk.iter().enumerate() {
            let id = (round * ROUND + j) as u64 + 500;
            let mut r = step_req(&ids[s], &inputs[s][rows[s] * I..(rows[s] + k) * I], id);
            if s == 2 {
                r = with_start(r, rows[s] as u64);
            }
            tx.send(r).await.unwrap();
            expect.push((id, s, rows[s], k));
            rows[s] += k;
        }
        for &(id, s, start, k) in &expect {
            let rep = reply(&mut rx).await;
            assert_eq!(rep.request_id, id, "round {round}: reply out of order");
            assert_eq!(rep.session_id, ids[s], "reply {id}: wrong session");
            let res = ok_result(&rep);
            assert_eq!(
                (res.start_step, res.next_step),
                (start as u64, (start + k) as u64),
                "reply {id}: step indices (messages applied out of order)"
            );
            got[s].extend(outputs(&rep));
        }
    }
    drop(tx);
    assert!(next_reply(&mut rx).await.unwrap().is_none());
    for s in 0..3 {
        let (want, _) = predict_one(&mut c, &inputs[s], h0s[s].clone()).await;
        assert_close(&format!("session {s} outputs"), &got[s], &want);
    }
    server.stop().await;
}

/// Exactly-once: `has_start_step` with start_step = 0 works for the first
/// message; a retry of the last message is answered with replayed = true and
/// bit-identical outputs, without stepping (GetSessionState unchanged, and
/// later outputs still match Predict on the inputs without the retry); a
/// retry over a stream replays too; a gap (ahead), a stale index (older than
/// the last message) and a retry with different inputs are
/// FAILED_PRECONDITION naming the current index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_retries() {
    let dir = small_repo();
    let server = TestServer::serving(dir.path()).await;
    let mut c = server.client();
    let sid = open(&mut c, None).await;
    let x = rand_vec(6 * I, 40);
    let (m1, m2, m3) = (&x[..2 * I], &x[2 * I..3 * I], &x[3 * I..]);

    let r1 = c
        .step(with_start(step_req(&sid, m1, 1), 0))
        .await
        .expect("start_step 0 with has_start_step")
        .into_inner();
    assert_eq!(
        (ok_result(&r1).start_step, ok_result(&r1).next_step),
        (0, 2)
    );
    assert!(!ok_result(&r1).replayed);
    let r2 = c
        .step(with_start(step_req(&sid, m2, 2), 2))
        .await
        .unwrap()
        .into_inner();
    assert!(!ok_result(&r2).replayed);
    let before = session_state(&mut c, &sid).await;
    assert_eq!(before.step_index, 3);

    // The retry of the last message.
    let retry = c
        .step(with_start(step_req(&sid, m2, 2), 2))
        .await
        .expect("retry")
        .into_inner();
    let rr = ok_result(&retry);
    assert!(rr.replayed, "a retry must say replayed");
    assert_eq!((rr.start_step, rr.next_step), (2, 3));
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(
        bits(outputs(&retry)),
        bits(outputs(&r2)),
        "identical outputs"
    );
    let after = session_state(&mut c, &sid).await;
    assert_eq!(after, before, "a retry must not step the session");

    // The same retry over a stream.
    let (tx, mut rx) = open_stream(&mut c).await;
    tx.send(with_start(step_req(&sid, m2, 9), 2)).await.unwrap();
    let sr = reply(&mut rx).await;
    assert_eq!(sr.request_id, 9);
    assert!(ok_result(&sr).replayed);
    assert_eq!(bits(outputs(&sr)), bits(outputs(&r2)));
    drop(tx);
    assert_eq!(session_state(&mut c, &sid).await, before);

    // Refusals: each names the current index 3.
    let gap = expect_err("gap", c.step(with_start(step_req(&sid, m3, 3), 5)).await);
    assert_status("gap", &gap, Code::FailedPrecondition, &["step 3", "5"]);
    let stale = expect_err("stale", c.step(with_start(step_req(&sid, m1, 4), 0)).await);
    assert_status("stale", &stale, Code::FailedPrecondition, &["step 3", "0"]);
    let changed = expect_err(
        "retry with other inputs",
        c.step(with_start(step_req(&sid, &m3[..I], 5), 2)).await,
    );
    assert_status(
        "changed retry",
        &changed,
        Code::FailedPrecondition,
        &["step 3"],
    );
    assert_eq!(
        session_state(&mut c, &sid).await,
        before,
        "refusals step nothing"
    );

    // The next message continues at 3, and the whole is Predict's sequence.
    let r3 = c
        .step(with_start(step_req(&sid, m3, 6), 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ok_result(&r3).start_step, ok_result(&r3).next_step),
        (3, 6)
    );
    let mut got = outputs(&r1);
    got.extend(outputs(&r2));
    got.extend(outputs(&r3));
    let (want, _) = predict_one(&mut c, &x, None).await;
    assert_close("outputs after retries vs Predict", &got, &want);
    server.stop().await;
}

/// Session cap and idempotent open: with max_sessions = 3 the 4th open is
/// RESOURCE_EXHAUSTED naming the limit; re-opening a known key at the cap
/// still returns its session; after CloseSession one more opens. Same
/// session_key → same session_id with created = false, via the field and via
/// `x-session-key` metadata; a closed session is NOT_FOUND and its key opens
/// a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cap_and_idempotent_open() {
    let dir = small_repo();
    let mut cfg = config_for(dir.path());
    cfg.engine.max_sessions = 3;
    let server = TestServer::start(cfg).await;
    server.wait_serving().await;
    let mut c = server.client();

    let keyed = |key: &str| pb::OpenSessionRequest {
        model: "m".into(),
        session_key: key.into(),
        ..Default::default()
    };
    let a = c.open_session(keyed("alpha")).await.unwrap().into_inner();
    assert!(a.created);
    assert_eq!((a.model.as_str(), a.version, a.step_index), ("m", 1, 0));
    assert!(a.ttl_ms > 0);
    let a2 = c.open_session(keyed("alpha")).await.unwrap().into_inner();
    assert_eq!(a2.session_id, a.session_id, "same key, same session");
    assert!(!a2.created);

    // The key as metadata.
    let mut req = tonic::Request::new(pb::OpenSessionRequest {
        model: "m".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-session-key", "beta".parse().unwrap());
    let b = c.open_session(req).await.unwrap().into_inner();
    assert!(b.created);
    let b2 = c.open_session(keyed("beta")).await.unwrap().into_inner();
    assert_eq!(b2.session_id, b.session_id, "metadata key = field key");
    assert!(!b2.created);
    let mut req = tonic::Request::new(pb::OpenSessionRequest {
        model: "m".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-session-key", "beta".parse().unwrap());
    let b3 = c.open_session(req).await.unwrap().into_inner();
    assert_eq!(b3.session_id, b.session_id);
    assert!(!b3.created);

    let third = open(&mut c, None).await;
    let full = expect_err("4th session", c.open_session(keyed("gamma")).await);
    assert_status("4th session", &full, Code::ResourceExhausted, &["3"]);
    // A known key at the cap is not a new session.
    let a3 = c
        .open_session(keyed("alpha"))
        .await
        .expect("known key at cap");
    assert_eq!(a3.into_inner().session_id, a.session_id);

    let closed = c
        .close_session(pb::CloseSessionRequest {
            session_id: third.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.step_index, 0);
    let g = c
        .open_session(keyed("gamma"))
        .await
        .expect("open after close");
    assert!(g.into_inner().created);
    let again = expect_err("5th", c.open_session(keyed("delta")).await);
    assert_eq!(again.code(), Code::ResourceExhausted);

    // A closed session is gone.
    let gone = expect_err("closed", c.step(step_req(&third, &[0.1; I], 1)).await);
    assert_status("step closed", &gone, Code::NotFound, &[third.as_str()]);
    let gone = expect_err(
        "close twice",
        c.close_session(pb::CloseSessionRequest {
            session_id: third.clone(),
        })
        .await,
    );
    assert_eq!(gone.code(), Code::NotFound);
    // Closing a keyed session frees its key.
    c.close_session(pb::CloseSessionRequest {
        session_id: a.session_id.clone(),
    })
    .await
    .unwrap();
    let a4 = c.open_session(keyed("alpha")).await.unwrap().into_inner();
    assert!(a4.created);
    assert_ne!(a4.session_id, a.session_id);
    server.stop().await;
}

/// TTL expiry on tokio's paused clock (engine level): a session idle past the
/// TTL is refused by `get` with SessionExpired (message says "expired", and
/// again on a second look), while one touched before the TTL stays alive; an
/// expired keyed session's key opens a new session; at the cap, idle
/// sessions are reclaimed instead of refusing; `sweep` expires idle ones.
#[tokio::test(start_paused = true)]
async fn sessions_expire_after_ttl() {
    let dir = small_repo();
    let engine = Engine::load(EngineConfig {
        model_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .expect("load engine");
    let model = engine.model("m", None).expect("model m");
    let params = |key: Option<&str>| OpenParams {
        key: key.map(str::to_string),
        owner: None,
        initial: None,
        step_index: 0,
    };
    let store = SessionStore::new(10, Duration::from_secs(60));
    let (a, _) = store.open(model.clone(), params(Some("ka"))).unwrap();
    let (b, _) = store.open(model.clone(), params(None)).unwrap();

    tokio::time::advance(Duration::from_secs(40)).await;
    store.get(&b.id).expect("b alive at 40 s");
    tokio::time::advance(Duration::from_secs(30)).await;
    // a: 70 s idle; b: 30 s idle.
    store
        .get(&b.id)
        .expect("b touched at 40 s is alive at 70 s");
    for look in ["first", "second"] {
        match store.get(&a.id) {
            Err(e @ EngineError::SessionExpired { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("expired"), "{look} look: {msg}");
                assert!(msg.contains(&a.id), "{look} look names the id: {msg}");
            }
            Err(e) => panic!("{look} look: expected SessionExpired, got {e}"),
            Ok(_) => panic!("{look} look: session a is alive after 70 s idle (ttl 60 s)"),
        }
    }
    assert_eq!(store.len(), 1);
    let (a2, created) = store.open(model.clone(), params(Some("ka"))).unwrap();
    assert!(created, "an expired session's key opens a new one");
    assert_ne!(a2.id, a.id);

    // sweep expires idle sessions.
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(store.sweep(), 2);
    assert!(store.is_empty());
    assert!(matches!(
        store.get(&b.id),
        Err(EngineError::SessionExpired { .. })
    ));

    // At the cap, idle sessions are reclaimed rather than refusing.
    let small = SessionStore::new(2, Duration::from_secs(60));
    let (x, _) = small.open(model.clone(), params(None)).unwrap();
    small.open(model.clone(), params(None)).unwrap();
    assert!(matches!(
        small.open(model.clone(), params(None)),
        Err(EngineError::SessionLimit { .. })
    ));
    tokio::time::advance(Duration::from_secs(61)).await;
    small
        .open(model.clone(), params(None))
        .expect("idle sessions reclaimed at the cap");
    assert!(matches!(
        small.get(&x.id),
        Err(EngineError::SessionExpired { .. })
    ));
    drop(model);
    engine.shutdown();
}

/// Export → open elsewhere → identical continuation: a session stepped on
/// server A, exported with GetSessionState and resumed on server B (the same
/// model files copied to another folder) gives bit-identical outputs on A
/// and B for the same further inputs, B's step index continues from A's
/// (and accepts start_step at it), and the final states agree. Resuming with
/// a different model name or an unserved version is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_session_continues_elsewhere() {
    let dir_a = small_repo();
    let dir_b = TempDir::new().unwrap();
    copy_tree(dir_a.path(), dir_b.path());
    let (server_a, server_b) = tokio::join!(
        TestServer::serving(dir_a.path()),
        TestServer::serving(dir_b.path())
    );
    let (mut a, mut b) = (server_a.client(), server_b.client());
    let x = rand_vec(7 * I, 70);
    let sid_a = open(&mut a, Some(rand_vec(L * H, 71))).await;
    a.step(step_req(&sid_a, &x[..2 * I], 1)).await.unwrap();
    a.step(step_req(&sid_a, &x[2 * I..3 * I], 2)).await.unwrap();
    let exported = session_state(&mut a, &sid_a).await;
    assert_eq!(exported.step_index, 3);

    let opened = b
        .open_session(pb::OpenSessionRequest {
            resume: Some(exported.clone()),
            ..Default::default()
        })
        .await
        .expect("resume on B")
        .into_inner();
    assert!(opened.created);
    assert_eq!(
        (opened.model.as_str(), opened.version, opened.step_index),
        ("m", 1, 3)
    );
    let sid_b = opened.session_id;
    assert_eq!(session_state(&mut b, &sid_b).await, exported);

    for (n, (lo, hi)) in [(3, 5), (5, 7)].into_iter().enumerate() {
        let ra = a
            .step(with_start(
                step_req(&sid_a, &x[lo * I..hi * I], 10),
                lo as u64,
            ))
            .await
            .unwrap()
            .into_inner();
        let rb = b
            .step(with_start(
                step_req(&sid_b, &x[lo * I..hi * I], 10),
                lo as u64,
            ))
            .await
            .expect("step on B at A's index")
            .into_inner();
        assert_eq!(
            (ok_result(&rb).start_step, ok_result(&rb).next_step),
            (lo as u64, hi as u64)
        );
        let (ya, yb) = (outputs(&ra), outputs(&rb));
        assert_close(&format!("continuation {n}: A vs B"), &yb, &ya);
    }
    let (fa, fb) = (
        session_state(&mut a, &sid_a).await,
        session_state(&mut b, &sid_b).await,
    );
    assert_eq!(fb.step_index, 7);
    assert_close(
        "final states A vs B",
        &fb.hidden.unwrap().values,
        &fa.hidden.unwrap().values,
    );

    // Resume refusals.
    let mut other = exported.clone();
    other.version = 4;
    let e = expect_err(
        "resume unknown version",
        b.open_session(pb::OpenSessionRequest {
            resume: Some(other),
            ..Default::default()
        })
        .await,
    );
    assert_status("resume version 4", &e, Code::NotFound, &["4"]);
    let e = expect_err(
        "resume other model",
        b.open_session(pb::OpenSessionRequest {
            model: "other".into(),
            resume: Some(exported.clone()),
            ..Default::default()
        })
        .await,
    );
    assert_status("resume other model", &e, Code::InvalidArgument, &["other"]);
    let e = expect_err(
        "resume + initial_state",
        b.open_session(pb::OpenSessionRequest {
            resume: Some(exported.clone()),
            initial_state: Some(hidden(vec![0.0; L * H])),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    tokio::join!(server_a.stop(), server_b.stop());
}

/// Each bad input gets its code with a message naming the field/value:
/// unknown model/version/session (NOT_FOUND; the version refusal lists the
/// served versions), wrong column count, rows×cols ≠ values, NaN, k = 0,
/// missing inputs, initial_state of the wrong size (OpenSession and
/// Predict, including declared sizes that disagree with the model), Predict
/// with no sequences or a 0-row sequence (INVALID_ARGUMENT). On a stream, a
/// bad message gets an error reply (code + message) and the stream goes on
/// serving the next good message. A good session stepped between all of
/// these (and sent bad messages itself) still matches Predict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_the_right_codes() {
    let dir = small_repo();
    let server = TestServer::serving(dir.path()).await;
    let mut c = server.client();
    let good = open(&mut c, None).await;
    let x = rand_vec(5 * I, 80);
    let mut got = outputs(
        &c.step(step_req(&good, &x[..I], 0))
            .await
            .unwrap()
            .into_inner(),
    );

    // Unknown names.
    let e = expect_err(
        "unknown model",
        c.get_model(pb::GetModelRequest {
            model: "nope".into(),
            version: 0,
        })
        .await,
    );
    assert_status("unknown model", &e, Code::NotFound, &["nope"]);
    let e = expect_err(
        "unknown model (open)",
        c.open_session(pb::OpenSessionRequest {
            model: "nope".into(),
            ..Default::default()
        })
        .await,
    );
    assert_status("unknown model (open)", &e, Code::NotFound, &["nope"]);
    let e = expect_err(
        "unknown version",
        c.get_model(pb::GetModelRequest {
            model: "m".into(),
            version: 9,
        })
        .await,
    );
    assert_status("unknown version", &e, Code::NotFound, &["9", "[1]"]);
    let e = expect_err(
        "unknown version (predict)",
        c.predict(pb::PredictRequest {
            model: "m".into(),
            version: 9,
            sequences: vec![pb::PredictSequence {
                inputs: Some(matrix(1, I, vec![0.0; I])),
                initial_state: None,
            }],
            return_states: false,
        })
        .await,
    );
    assert_status(
        "unknown version (predict)",
        &e,
        Code::NotFound,
        &["9", "[1]"],
    );
    let e = expect_err(
        "unknown session",
        c.step(step_req("feedface", &[0.0; I], 0)).await,
    );
    assert_status("unknown session", &e, Code::NotFound, &["feedface"]);
    let e = expect_err(
        "unknown session (state)",
        c.get_session_state(pb::GetSessionStateRequest {
            session_id: "feedface".into(),
        })
        .await,
    );
    assert_status("unknown session (state)", &e, Code::NotFound, &["feedface"]);

    // Malformed step inputs, sent to the good session itself.
    let bad_step = |inputs: Option<pb::Matrix>| pb::StepRequest {
        session_id: good.clone(),
        inputs,
        ..Default::default()
    };
    let cases: Vec<(&str, pb::StepRequest, Vec<&str>)> = vec![
        (
            "wrong columns",
            bad_step(Some(matrix(2, 4, vec![0.1; 8]))),
            vec!["inputs", "3 features", "4 cols"],
        ),
        (
            "rows×cols ≠ values",
            bad_step(Some(matrix(2, 3, vec![0.1; 5]))),
            vec!["inputs", "5 values"],
        ),
        (
            "NaN",
            bad_step(Some(matrix(1, 3, vec![0.1, f32::NAN, 0.2]))),
            vec!["inputs[1]", "NaN"],
        ),
        (
            "infinity",
            bad_step(Some(matrix(1, 3, vec![0.1, 0.2, f32::INFINITY]))),
            vec!["inputs[2]", "inf"],
        ),
        (
            "k = 0",
            bad_step(Some(matrix(0, 3, vec![]))),
            vec!["inputs", "0 rows"],
        ),
        ("no inputs", bad_step(None), vec!["inputs"]),
    ];
    for (what, req, needles) in &cases {
        let e = expect_err(what, c.step(req.clone()).await);
        assert_status(what, &e, Code::InvalidArgument, needles);
    }

    // The same over one stream, each bad message followed by a good one.
    let (tx, mut rx) = open_stream(&mut c).await;
    let mut row = 1;
    for (n, (what, req, needles)) in cases.iter().enumerate() {
        let mut bad = req.clone();
        bad.request_id = 100 + n as u64;
        tx.send(bad).await.unwrap();
        let rep = reply(&mut rx).await;
        assert_eq!(rep.request_id, 100 + n as u64);
        assert_eq!(rep.session_id, good);
        match &rep.result {
            Some(pb::step_response::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{what} on a stream");
                for needle in needles {
                    assert!(
                        e.message.contains(needle),
                        "{what} on a stream: {:?}",
                        e.message
                    );
                }
            }
            other => panic!("{what} on a stream: expected an error reply, got {other:?}"),
        }
        if n < 3 {
            tx.send(step_req(&good, &x[row * I..(row + 1) * I], 200 + n as u64))
                .await
                .unwrap();
            let rep = reply(&mut rx).await;
            assert_eq!(rep.request_id, 200 + n as u64);
            got.extend(outputs(&rep));
            row += 1;
        }
    }
    // An unknown session on the stream: NOT_FOUND as an error reply.
    tx.send(step_req("feedface", &[0.0; I], 300)).await.unwrap();
    let rep = reply(&mut rx).await;
    match &rep.result {
        Some(pb::step_response::Result::Error(e)) => {
            assert_eq!(e.code, Code::NotFound as i32);
            assert!(e.message.contains("feedface"), "{:?}", e.message);
        }
        other => panic!("unknown session on a stream: {other:?}"),
    }
    drop(tx);
    assert!(next_reply(&mut rx).await.unwrap().is_none());

    // Initial states of the wrong size.
    let open_with = |h: pb::HiddenState| pb::OpenSessionRequest {
        model: "m".into(),
        initial_state: Some(h),
        ..Default::default()
    };
    let wrong_states = [
        pb::HiddenState {
            num_layers: L as u32,
            hidden_size: H as u32,
            values: vec![0.0; L * H - 1],
        },
        pb::HiddenState {
            num_layers: 1,
            hidden_size: (L * H) as u32,
            values: vec![0.0; L * H],
        },
        pb::HiddenState {
            num_layers: L as u32,
            hidden_size: H as u32,
            values: vec![f32::NAN; L * H],
        },
    ];
    for (n, h) in wrong_states.iter().enumerate() {
        let e = expect_err(
            "open wrong state",
            c.open_session(open_with(h.clone())).await,
        );
        assert_status(
            &format!("open with wrong initial_state {n}"),
            &e,
            Code::InvalidArgument,
            &["initial_state"],
        );
        let e = expect_err(
            "predict wrong state",
            c.predict(pb::PredictRequest {
                model: "m".into(),
                sequences: vec![pb::PredictSequence {
                    inputs: Some(matrix(1, I, vec![0.0; I])),
                    initial_state: Some(h.clone()),
                }],
                ..Default::default()
            })
            .await,
        );
        assert_status(
            &format!("predict with wrong initial_state {n}"),
            &e,
            Code::InvalidArgument,
            &["sequences[0].initial_state"],
        );
    }

    // Predict with no sequences, a 0-row sequence, wrong columns, NaN.
    let e = expect_err(
        "predict no sequences",
        c.predict(pb::PredictRequest {
            model: "m".into(),
            ..Default::default()
        })
        .await,
    );
    assert_status(
        "predict no sequences",
        &e,
        Code::InvalidArgument,
        &["sequences", "0"],
    );
    let predict_inputs = |m: pb::Matrix| pb::PredictRequest {
        model: "m".into(),
        sequences: vec![
            pb::PredictSequence {
                inputs: Some(matrix(1, I, vec![0.0; I])),
                initial_state: None,
            },
            pb::PredictSequence {
                inputs: Some(m),
                initial_state: None,
            },
        ],
        ..Default::default()
    };
    for (what, m, needles) in [
        ("0 rows", matrix(0, I, vec![]), vec!["sequences[1]"]),
        (
            "wrong columns",
            matrix(2, 4, vec![0.0; 8]),
            vec!["sequences[1]"],
        ),
        (
            "rows×cols ≠ values",
            matrix(2, 3, vec![0.0; 5]),
            vec!["sequences[1]", "5 values"],
        ),
        (
            "NaN",
            matrix(1, 3, vec![0.0, 0.0, f32::NAN]),
            vec!["sequences[1]", "NaN"],
        ),
    ] {
        let e = expect_err(what, c.predict(predict_inputs(m)).await);
        assert_status(
            &format!("predict {what}"),
            &e,
            Code::InvalidArgument,
            &needles,
        );
    }

    // The good session, after all this, still matches Predict.
    got.extend(outputs(
        &c.step(step_req(&good, &x[row * I..(row + 1) * I], 0))
            .await
            .unwrap()
            .into_inner(),
    ));
    row += 1;
    assert_eq!(row, 5, "5 good rows were sent");
    let (want, _) = predict_one(&mut c, &x, None).await;
    assert_close("good session after errors", &got, &want);
    assert_eq!(session_state(&mut c, &good).await.step_index, 5);
    server.stop().await;
}

/// A message over max_message_bytes on a StepStream ends the stream with an
/// error status (OUT_OF_RANGE or RESOURCE_EXHAUSTED), not a clean end, after
/// the replies to the messages before it; the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_stream_message_is_an_error() {
    let dir = small_repo();
    let mut cfg = config_for(dir.path());
    cfg.max_message_bytes = 16 << 10;
    let server = TestServer::start(cfg).await;
    server.wait_serving().await;
    let mut c = server.client();
    let sid = open(&mut c, None).await;
    let (tx, mut rx) = open_stream(&mut c).await;
    tx.send(step_req(&sid, &rand_vec(I, 90), 1)).await.unwrap();
    assert_eq!(reply(&mut rx).await.request_id, 1);
    // 4000 rows × 3 floats ≈ 48 KiB > 16 KiB.
    tx.send(step_req(&sid, &rand_vec(4000 * I, 91), 2))
        .await
        .unwrap();
    match next_reply(&mut rx).await {
        Err(s) => assert!(
            matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted),
            "oversize message: unexpected code {:?}: {}",
            s.code(),
            s.message()
        ),
        Ok(Some(r)) => panic!("oversize message: got a reply {r:?}"),
        Ok(None) => panic!("oversize message: the stream ended cleanly with no reply"),
    }
    drop(tx);
    // The session and server are fine.
    let r = c.step(step_req(&sid, &rand_vec(I, 92), 3)).await.unwrap();
    assert_eq!(ok_result(&r.into_inner()).start_step, 1);
    server.stop().await;
}

/// Shutdown with a StepStream open (one message answered, the client side
/// still open): the stream ends with UNAVAILABLE and `run` returns Ok within
/// 5 s, although drain_timeout is 60 s (open streams are ended, not waited
/// out); health says NOT_SERVING during the drain or the port is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let dir = small_repo();
    let mut cfg = config_for(dir.path());
    cfg.drain_timeout = Duration::from_secs(60);
    let server = TestServer::start(cfg).await;
    server.wait_serving().await;
    let mut c = server.client();
    let sid = open(&mut c, None).await;
    let (tx, mut rx) = open_stream(&mut c).await;
    tx.send(step_req(&sid, &rand_vec(I, 95), 1)).await.unwrap();
    let rep = reply(&mut rx).await;
    assert_eq!(rep.request_id, 1);
    ok_result(&rep);

    let t0 = std::time::Instant::now();
    let stopping = tokio::spawn(server.stop_within(Duration::from_secs(5)));
    match next_reply(&mut rx).await {
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "stream end: {s:?}"),
        Ok(other) => panic!("expected the stream to end with UNAVAILABLE, got {other:?}"),
    }
    stopping.await.expect("server stopped cleanly within 5 s");
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(tx);
}

/// Shutdown with a health Watch stream open (what load balancers and
/// orchestrators keep): the watcher hears NOT_SERVING, its stream ends, and
/// `run` returns Ok within 5 s although drain_timeout is 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_health_watches() {
    let dir = small_repo();
    let mut cfg = config_for(dir.path());
    cfg.drain_timeout = Duration::from_secs(60);
    let server = TestServer::start(cfg).await;
    server.wait_serving().await;
    let mut watch = HealthClient::new(server.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("first watch status")
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let stopping = tokio::spawn(server.stop_within(Duration::from_secs(5)));
    let mut seen = Vec::new();
    let end = loop {
        match tokio::time::timeout(WAIT, watch.message()).await {
            Err(_) => panic!("the health watch did not end within {WAIT:?}; saw {seen:?}"),
            Ok(Ok(Some(m))) => seen.push(m.status),
            Ok(other) => break other,
        }
    };
    assert!(
        seen.contains(&(ServingStatus::NotServing as i32)),
        "the watcher never heard NOT_SERVING: {seen:?} then {end:?}"
    );
    stopping
        .await
        .expect("server stopped cleanly within 5 s with a health watch open");
}

/// ListModels / GetModel: versions 1 and 3 of `m` (different sizes and reset
/// modes) are listed with latest = 3 and versions [1, 3]; GetModel version 1
/// reports version 1's sizes; sizes, head, reset_mode, task, dtype,
/// num_parameters, source_format and serving.json's description are
/// reported. Broken folders (a model with a garbage config.json, a version 2
/// with one, a non-numeric version) are skipped and the good ones served.
/// Health goes to SERVING for "" and gru.v1.GruService (watched from the
/// start: only NOT_SERVING before it); an unknown service is NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_described() {
    let dir = TempDir::new().unwrap();
    let v1_cfg = small_config();
    let v3_cfg = ModelConfig::new(I, 6, 1).with_reset_mode(ResetMode::BeforeMatmul);
    write_model(dir.path(), "m", 1, v1_cfg.clone(), 1);
    let v3 = write_model(dir.path(), "m", 3, v3_cfg.clone(), 3);
    std::fs::write(
        v3.join("serving.json"),
        r#"{"description": "three sensors in, one value out"}"#,
    )
    .unwrap();
    for broken in [dir.path().join("broken/1"), dir.path().join("m/2")] {
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("config.json"), "garbage {").unwrap();
        std::fs::write(broken.join("model.safetensors"), "garbage").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("m/latest")).unwrap();

    let server = TestServer::start(config_for(dir.path())).await;
    // Watch health from the start: NOT_SERVING (maybe) then SERVING.
    let mut watch = HealthClient::new(server.channel.clone())
        .watch(HealthCheckRequest {
            service: "gru.v1.GruService".into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    loop {
        let m = tokio::time::timeout(WAIT, watch.message())
            .await
            .expect("health never became SERVING")
            .expect("watch")
            .expect("watch ended");
        if m.status == ServingStatus::Serving as i32 {
            break;
        }
        assert_eq!(m.status, ServingStatus::NotServing as i32);
    }
    // (An open Watch stream and shutdown: see shutdown_ends_health_watches.)
    drop(watch);
    server.wait_serving().await;
    assert_eq!(
        server.health("gru.v1.GruService").await.unwrap(),
        ServingStatus::Serving as i32
    );
    let e = expect_err("unknown health service", server.health("nope").await);
    assert_eq!(e.code(), Code::NotFound);

    let mut c = server.client();
    let list = c
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(list.len(), 1, "only m is served: {list:?}");
    let latest = &list[0];
    let want3 = pb::ModelInfo {
        name: "m".into(),
        version: 3,
        versions: vec![1, 3],
        input_size: I as u32,
        hidden_size: 6,
        num_layers: 1,
        output_size: 6,
        has_head: false,
        reset_mode: pb::ResetMode::BeforeMatmul as i32,
        task: pb::Task::Regression as i32,
        dtype: "f32".into(),
        num_parameters: v3_cfg.num_parameters() as u64,
        description: "three sensors in, one value out".into(),
        source_format: "native".into(),
    };
    assert_eq!(latest, &want3);
    let got3 = c
        .get_model(pb::GetModelRequest {
            model: "m".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(got3, want3);
    let got1 = c
        .get_model(pb::GetModelRequest {
            model: "m".into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let want1 = pb::ModelInfo {
        name: "m".into(),
        version: 1,
        versions: vec![1, 3],
        input_size: I as u32,
        hidden_size: H as u32,
        num_layers: L as u32,
        output_size: O as u32,
        has_head: true,
        reset_mode: pb::ResetMode::AfterMatmul as i32,
        task: pb::Task::Regression as i32,
        dtype: "f32".into(),
        num_parameters: v1_cfg.num_parameters() as u64,
        description: String::new(),
        source_format: "native".into(),
    };
    assert_eq!(got1, want1);
    let e = expect_err(
        "broken model",
        c.get_model(pb::GetModelRequest {
            model: "broken".into(),
            version: 0,
        })
        .await,
    );
    assert_eq!(e.code(), Code::NotFound);
    let e = expect_err(
        "broken version",
        c.get_model(pb::GetModelRequest {
            model: "m".into(),
            version: 2,
        })
        .await,
    );
    assert_status("broken version 2", &e, Code::NotFound, &["[1, 3]"]);

    // A session opened on version 0 runs the latest (3); version 1 on request.
    let s3 = c
        .open_session(pb::OpenSessionRequest {
            model: "m".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s3.version, 3);
    let r = c
        .step(step_req(&s3.session_id, &[0.1; I], 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok_result(&r).outputs.as_ref().unwrap().cols, 6);
    let s1 = c
        .open_session(pb::OpenSessionRequest {
            model: "m".into(),
            version: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s1.version, 1);
    server.stop().await;
}

/// A repository with no loadable model keeps health NOT_SERVING (after the
/// loader has finished: ListModels answers, with no models), and shutdown is
/// still clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_models_is_not_serving() {
    let dir = TempDir::new().unwrap();
    let broken = dir.path().join("broken/1");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "{}").unwrap();
    let server = TestServer::start(config_for(dir.path())).await;
    let mut c = server.client();
    let deadline = tokio::time::Instant::now() + WAIT;
    let models = loop {
        match c.list_models(pb::ListModelsRequest {}).await {
            Ok(r) => break r.into_inner().models,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "while loading: {s:?}");
                assert!(tokio::time::Instant::now() < deadline, "never loaded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(models.is_empty());
    // ListModels answering means the loader has published the engine; it
    // would set SERVING straight after that, waiting on nothing, so a Check
    // sent once the reply is back sees it: no sleep is needed.
    for svc in ["", "gru.v1.GruService"] {
        assert_eq!(
            server.health(svc).await.unwrap(),
            ServingStatus::NotServing as i32,
            "health of {svc:?}"
        );
    }
    server.stop().await;
}

/// Server reflection (v1alpha, what grpcurl 1.8 speaks, and v1) lists
/// gru.v1.GruService and the health service, and serves the file that
/// defines gru.v1.GruService.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_service() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let dir = small_repo();
    let server = TestServer::serving(dir.path()).await;
    let mut r = ServerReflectionClient::new(server.channel.clone());
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "gru.v1.GruService".into(),
            )),
        },
    ];
    let mut replies = r
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let first = replies.message().await.unwrap().expect("list reply");
    let names: Vec<String> = match first.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    };
    assert!(names.iter().any(|n| n == "gru.v1.GruService"), "{names:?}");
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    let second = replies.message().await.unwrap().expect("file reply");
    match second.message_response {
        Some(MessageResponse::FileDescriptorResponse(f)) => {
            assert!(!f.file_descriptor_proto.is_empty())
        }
        other => panic!("expected a file descriptor, got {other:?}"),
    }

    // v1 too.
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut r = ServerReflectionClient::new(server.channel.clone());
        let mut replies = r
            .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]))
            .await
            .expect("reflection v1")
            .into_inner();
        match replies.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => assert!(
                l.service.iter().any(|s| s.name == "gru.v1.GruService"),
                "{:?}",
                l.service
            ),
            other => panic!("v1: expected a service list, got {other:?}"),
        }
    }
    server.stop().await;
}

/// `gru-serve health` answers from the server's health service, and says
/// plainly when nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_reports_serving_and_unreachable() {
    let repo = small_repo();
    let server = TestServer::serving(repo.path()).await;
    let url = format!("http://{}", server.addr);
    let t = Duration::from_secs(5);
    assert_eq!(
        gru_serve::server::check_health(&url, "", t, None).await,
        Ok(true)
    );
    assert_eq!(
        gru_serve::server::check_health(&url, "gru.v1.TrainingService", t, None).await,
        Ok(true)
    );
    let unknown = gru_serve::server::check_health(&url, "no.such.Service", t, None).await;
    assert!(unknown.unwrap_err().contains("NotFound"));
    server.stop().await;
    let gone = gru_serve::server::check_health(&url, "", Duration::from_millis(500), None).await;
    assert!(gone.unwrap_err().contains("connect to"));
}

/// With `model_poll` set, version folders dropped into the repository are
/// served without a restart; a broken one is skipped and the rest go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescans_serve_new_version_folders() {
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.engine.model_poll = Duration::from_millis(100);
    let server = TestServer::start(config).await;
    server.wait_serving().await;
    let mut c = server.client();
    std::fs::create_dir_all(repo.path().join("m/3")).unwrap();
    std::fs::write(repo.path().join("m/3/config.json"), b"{not json").unwrap();
    write_model(
        repo.path(),
        "m",
        2,
        ModelConfig::new(3, 8, 2).with_head(2),
        8,
    );
    write_model(repo.path(), "fresh", 1, ModelConfig::new(2, 4, 1), 9);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let models = c
            .list_models(pb::ListModelsRequest {})
            .await
            .unwrap()
            .into_inner()
            .models;
        let m = models.iter().find(|m| m.name == "m").unwrap();
        if m.versions == vec![1, 2] && models.iter().any(|m| m.name == "fresh") {
            break;
        }
        assert!(m.versions.len() <= 2, "the broken version 3 was served");
        assert!(
            tokio::time::Instant::now() < deadline,
            "new folders not served: {models:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Export (the `gru-serve export` subcommand) reads the same folders.
    let out = repo.path().join("m2.safetensors");
    let cfg = gru_serve::engine::registry::export_pytorch(
        repo.path(),
        "m",
        Some(2),
        &out,
        "gru.",
        "head.",
    )
    .unwrap();
    assert_eq!(
        (cfg.input_size, cfg.hidden_size, cfg.output_size),
        (3, 8, Some(2))
    );
    let names = safetensors::SafeTensors::deserialize(&std::fs::read(&out).unwrap())
        .unwrap()
        .names()
        .len();
    assert_eq!(names, 2 * 4 + 2);
    let latest =
        gru_serve::engine::registry::export_pytorch(repo.path(), "m", None, &out, "gru.", "head.");
    assert!(
        latest.unwrap_err().contains("m/3"),
        "the latest folder is the broken one"
    );
    server.stop().await;
}

/// A StepStream that goes quiet for longer than the idle timeout is ended
/// with DEADLINE_EXCEEDED; its sessions live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_are_ended_and_sessions_survive() {
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.stream_idle_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    server.wait_serving().await;
    let mut c = server.client();
    let id = open(&mut c, None).await;
    let (tx, rx) = mpsc::channel(4);
    let mut replies = c
        .step_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(step_req(&id, &rand_vec(I, 1), 1)).await.unwrap();
    assert_eq!(ok_result(&reply(&mut replies).await).next_step, 1);
    let end = next_reply(&mut replies)
        .await
        .expect_err("the stream should end");
    assert_status(
        "idle stream",
        &end,
        Code::DeadlineExceeded,
        &["idle timeout"],
    );
    let r = c
        .step(step_req(&id, &rand_vec(I, 2), 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ok_result(&r).next_step,
        2,
        "the session outlived its stream"
    );
    drop(tx);
    server.stop().await;
}
