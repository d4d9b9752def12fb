#![cfg(feature = "grpc")]
//! Sessions end to end: open, step (unary and StepStream), retry, cap,
//! expire, export and resume, on the real `gru_serve::server::run` at
//! 127.0.0.1:0 driven through the generated client. Refusals of bad input
//! are in refusals.rs; models, health, reflection and shutdown in
//! operations.rs.
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
//! - **Every test ends with a clean shutdown**: `run()` must return `Ok`
//!   within a timeout once the shutdown future resolves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gru_serve::engine::{Engine, EngineConfig, EngineError, OpenParams, Owner, SessionStore};
use gru_serve::service::pb;
use tempfile::TempDir;
use tonic::Code;

mod common;
use common::server::*;
use common::sessions::*;

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
    let gone = expect_err("closed", c.step(step_req(&third, [0.1; I], 1)).await);
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
        owner: Owner::Nobody,
        initial: None,
        step_index: 0,
        last: None,
    };
    let store = SessionStore::new(10, Duration::from_secs(60));
    let (a, _) = store.open(model.clone(), params(Some("ka"))).unwrap();
    let (b, _) = store.open(model.clone(), params(None)).unwrap();
    // Each session counts itself on its model version (gru_model_sessions_live).
    let live = || {
        model
            .worker
            .stats
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(live(), 2);

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
    // Expired, swept, reclaimed: once the last handles go, so do the counts.
    drop((a, b, a2, x, store, small));
    assert_eq!(live(), 0, "every session counted itself out");
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
