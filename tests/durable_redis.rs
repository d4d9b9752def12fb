//! Sessions shared by replicas through a real Redis (`redis-server`, started
//! here on a free loopback port): takeover after a crash, fencing when two
//! replicas touch one session, Redis going away and coming back, and a bad
//! store URL refused at start; a Triton sequence moving between replicas by
//! its id; a replica without a session's model leaving it to its owner. Balancers in front of replicas: tests/balancers.rs.

#![cfg(feature = "grpc")]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{free_port, Spawned};
use common::server::{assert_close, assert_status, matrix, rand_vec, small_repo, step_req, Client};
use gru_serve::service::pb;
use tonic::Code;

const I: usize = 3;
const O: usize = 2;

/// `redis-server` on a free port, no persistence; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server not up in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(repo: &Path, port: u16, store: &str, interval: &str, metrics: Option<u16>) -> Spawned {
    spawn_with_env(repo, port, store, interval, metrics, &[])
}

fn spawn_with_env(
    repo: &Path,
    port: u16,
    store: &str,
    interval: &str,
    metrics: Option<u16>,
    env: &[(&str, &Path)],
) -> Spawned {
    let metrics = metrics.map_or("off".to_string(), |p| format!("127.0.0.1:{p}"));
    Spawned(
        Command::new(env!("CARGO_BIN_EXE_gru-serve"))
            .envs(env.iter().copied())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--model-dir")
            .arg(repo)
            .args(["--metrics-listen", &metrics])
            .args(["--session-store", store, "--checkpoint-interval", interval])
            .env_remove("GRU_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gru-serve"),
    )
}

async fn start(repo: &Path, store: &str, interval: &str) -> (Spawned, Client, u16) {
    let port = free_port();
    let mut s = spawn(repo, port, store, interval, None);
    let ch = s.wait_serving(&format!("http://127.0.0.1:{port}")).await;
    (s, Client::new(ch), port)
}

fn kill9(s: &mut Spawned) {
    let _ = s.0.kill();
    let _ = s.0.wait();
}

async fn predict(c: &mut Client, x: &[f32]) -> Vec<f32> {
    let r = c
        .predict(pb::PredictRequest {
            model: "m".into(),
            sequences: vec![pb::PredictSequence {
                inputs: Some(matrix(x.len() / I, I, x.to_vec())),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("predict")
        .into_inner();
    r.outputs[0].outputs.clone().expect("outputs").values
}

async fn open_key(c: &mut Client, key: &str) -> pb::OpenSessionResponse {
    c.open_session(pb::OpenSessionRequest {
        model: "m".into(),
        session_key: key.into(),
        ..Default::default()
    })
    .await
    .expect("open by key")
    .into_inner()
}

async fn step_at(c: &mut Client, id: &str, x: &[f32], t: usize) -> Result<Vec<f32>, tonic::Status> {
    let mut req = step_req(id, &x[t * I..(t + 1) * I], t as u64);
    req.start_step = t as u64;
    req.has_start_step = true;
    let r = c.step(req).await?.into_inner();
    match r.result {
        Some(pb::step_response::Result::Ok(ok)) => Ok(ok.outputs.expect("outputs").values),
        other => panic!("step failed: {other:?}"),
    }
}

/// Steps `t` on `c` the way a failing-over client does: if the session is
/// behind (FAILED_PRECONDITION naming its index), replays from there,
/// checking each replayed output against what it already had.
async fn step_with_replay(c: &mut Client, id: &str, x: &[f32], t: usize, had: &[f32]) -> Vec<f32> {
    match step_at(c, id, x, t).await {
        Ok(out) => out,
        Err(s) if s.code() == Code::FailedPrecondition => {
            let at: usize = s
                .message()
                .split("is at step ")
                .nth(1)
                .and_then(|r| r.split(';').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no step index in: {}", s.message()));
            assert!(at < t, "the session is behind, not ahead ({at} vs {t})");
            for r in at..t {
                let again = step_at(c, id, x, r).await.expect("replay");
                assert_close("replayed", &again, &had[r * O..(r + 1) * O]);
            }
            step_at(c, id, x, t).await.expect("after replay")
        }
        Err(s) => panic!("step {t}: {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_its_sessions_continue_on_another_exactly() {
    let redis = Redis::start_on(free_port());
    let repo = small_repo();
    let (mut a, mut ca, _) = start(repo.path(), &redis.url(), "100ms").await;
    let (mut b, mut cb, _) = start(repo.path(), &redis.url(), "100ms").await;
    let n = 10;
    let t_all = 10;
    let xs: Vec<Vec<f32>> = (0..n).map(|k| rand_vec(t_all * I, 40 + k as u64)).collect();
    let mut got: Vec<Vec<f32>> = vec![Vec::new(); n];
    let mut ids = Vec::new();
    for k in 0..n {
        let s = open_key(&mut ca, &format!("s{k}")).await;
        for t in 0..4 {
            got[k].extend(step_at(&mut ca, &s.session_id, &xs[k], t).await.unwrap());
        }
        ids.push(s.session_id);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for k in 0..n {
        for t in 4..6 {
            got[k].extend(step_at(&mut ca, &ids[k], &xs[k], t).await.unwrap());
        }
    }
    kill9(&mut a);
    // Replica B has never seen these sessions: it takes each over from
    // Redis on its first call, by id, and the client replays what was lost.
    for k in 0..n {
        let mut out = got[k][..6 * O].to_vec();
        for t in 6..t_all {
            let o = step_with_replay(&mut cb, &ids[k], &xs[k], t, &out).await;
            out.extend(o);
        }
        let want = predict(&mut cb, &xs[k]).await;
        assert_close(&format!("session {k}"), &out, &want);
        // By key too: the same session, at its end.
        let s = open_key(&mut cb, &format!("s{k}")).await;
        assert_eq!(
            (s.session_id.as_str(), s.step_index, s.created),
            (ids[k].as_str(), t_all as u64, false)
        );
    }
    drop(a);
    b.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_touching_one_session_alternately_never_fork_it() {
    let redis = Redis::start_on(free_port());
    let repo = small_repo();
    let (mut a, mut ca, _) = start(repo.path(), &redis.url(), "50ms").await;
    let (mut b, mut cb, _) = start(repo.path(), &redis.url(), "50ms").await;
    let t_all = 16;
    let x = rand_vec(t_all * I, 5);
    let want = predict(&mut ca, &x).await;
    let id = open_key(&mut ca, "shared").await.session_id;
    let mut out = Vec::new();
    for t in 0..t_all {
        // Each call lands on the other replica; each takes the session over
        // (raising its epoch) and the other's copy is dropped.
        // No replay is ever needed: the taker reads the last checkpoint
        // (the pause outlasts the interval), and the loser's copy is gone,
        // never answered from.
        let c = if t % 2 == 0 { &mut ca } else { &mut cb };
        let o = step_at(c, &id, &x, t)
            .await
            .unwrap_or_else(|s| panic!("step {t} on replica {}: {s:?}", t % 2));
        out.extend(o);
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert_close("one linear history", &out, &want);
    // Whichever replica is asked, the session is at its end: one history.
    for c in [&mut ca, &mut cb] {
        let s = open_key(c, "shared").await;
        assert_eq!(
            (s.session_id.as_str(), s.step_index),
            (id.as_str(), t_all as u64)
        );
    }
    a.terminate().await;
    b.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triton_sequence_moves_between_replicas_by_its_id() {
    use common::triton::{output, seq_request};
    use gru_serve::service::triton::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
    let redis = Redis::start_on(free_port());
    let repo = small_repo();
    let (mut a, mut ca, pa) = start(repo.path(), &redis.url(), "50ms").await;
    let (mut b, _, pb_) = start(repo.path(), &redis.url(), "50ms").await;
    let v2 = |port: u16| async move {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        GrpcInferenceServiceClient::new(ch)
    };
    let mut replicas = [v2(pa).await, v2(pb_).await];
    let t_all = 10;
    let x = rand_vec(t_all * I, 88);
    let want = predict(&mut ca, &x).await;
    let mut out = Vec::new();
    for t in 0..t_all {
        // Each request reaches the other replica (as through a Service
        // without affinity): it finds sequence 77 by its id in Redis and
        // takes its session over.
        let c = &mut replicas[t % 2];
        let r = c
            .model_infer(seq_request(
                Some((77, t == 0, false)),
                &x[t * I..(t + 1) * I],
            ))
            .await
            .unwrap_or_else(|e| panic!("step {t} on replica {}: {e}", t % 2))
            .into_inner();
        out.extend(output(&r, "OUTPUT"));
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert_close("sequence 77 across replicas", &out, &want);
    // END on one replica ends it everywhere.
    replicas[0]
        .model_infer(seq_request(Some((77, false, true)), &x[..I]))
        .await
        .expect("END");
    let e = replicas[1]
        .model_infer(seq_request(Some((77, false, false)), &x[..I]))
        .await
        .expect_err("the ended sequence");
    assert_status(
        "after END elsewhere",
        &e,
        Code::InvalidArgument,
        &["sequence 77", "must specify the START flag"],
    );
    a.terminate().await;
    b.terminate().await;
}

/// A CA and a certificate for "localhost" signed by it (PEM files in a
/// temporary folder): what a private Redis behind TLS presents.
fn private_ca() -> tempfile::TempDir {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::TempDir::new().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    for (f, pem) in [
        ("ca.pem", ca_pem),
        ("redis.pem", leaf.pem()),
        ("redis.key", key.serialize_pem()),
    ] {
        std::fs::write(dir.path().join(f), pem).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_to_a_private_ca_carries_sessions_between_replicas() {
    let pki = private_ca();
    let p = |f: &str| pki.path().join(f);
    let rport = free_port();
    // TLS only (--port 0): a plaintext client could not talk to it.
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &rport.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(p("redis.pem"))
        .arg("--tls-key-file")
        .arg(p("redis.key"))
        .arg("--tls-ca-cert-file")
        .arg(p("ca.pem"))
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", rport)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server (TLS) not up in 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("rediss://localhost:{rport}");
    // The private CA reaches the server the standard way (rustls' native
    // roots read SSL_CERT_FILE).
    let env = [("SSL_CERT_FILE", pki.path().join("ca.pem"))];
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let repo = small_repo();
    let (pa, pb_) = (free_port(), free_port());
    let mut a = spawn_with_env(repo.path(), pa, &url, "50ms", None, &env);
    let mut b = spawn_with_env(repo.path(), pb_, &url, "50ms", None, &env);
    let mut ca = Client::new(a.wait_serving(&format!("http://127.0.0.1:{pa}")).await);
    let mut cb = Client::new(b.wait_serving(&format!("http://127.0.0.1:{pb_}")).await);
    let x = rand_vec(6 * I, 99);
    let want = predict(&mut ca, &x).await;
    let id = open_key(&mut ca, "over-tls").await.session_id;
    let mut out = Vec::new();
    for t in 0..3 {
        out.extend(step_at(&mut ca, &id, &x, t).await.unwrap());
    }
    // Replica B has never seen it: it takes it over through the TLS Redis.
    for t in 3..6 {
        out.extend(
            step_at(&mut cb, &id, &x, t)
                .await
                .unwrap_or_else(|s| panic!("step {t} on B over rediss://: {s:?}")),
        );
    }
    assert_close("one history through rediss://", &out, &want);
    a.terminate().await;
    b.terminate().await;
    let _ = redis.kill();
    let _ = redis.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_keeps_sessions_serving_and_they_catch_up_when_it_returns() {
    let rport = free_port();
    let redis = Redis::start_on(rport);
    let repo = small_repo();
    let port = free_port();
    let mport = free_port();
    let mut a = spawn(repo.path(), port, &redis.url(), "100ms", Some(mport));
    let mut ca = Client::new(a.wait_serving(&format!("http://127.0.0.1:{port}")).await);
    let x = rand_vec(8 * I, 77);
    let id = open_key(&mut ca, "k").await.session_id;
    let mut out = Vec::new();
    out.extend(step_at(&mut ca, &id, &x, 0).await.unwrap());
    drop(redis);
    // Redis is gone: the session this replica holds keeps stepping.
    for t in 1..4 {
        out.extend(step_at(&mut ca, &id, &x, t).await.unwrap());
    }
    let metrics_addr = format!("127.0.0.1:{mport}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = common::process::http_get(metrics_addr, "/metrics")
            .await
            .expect("metrics");
        if body.contains("gru_session_store_up 0") {
            assert!(body.contains("gru_session_store_errors_total"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "store_up never went to 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A session it does not hold cannot be looked up: UNAVAILABLE, retryable.
    let mut req = step_req("0123456789abcdef0123456789abcdef", &x[..I], 1);
    req.has_start_step = true;
    let e = ca.step(req).await.expect_err("unknown session, Redis down");
    assert_status("store down", &e, Code::Unavailable, &["unreachable"]);
    // Redis returns (empty, as after a restart): the checkpoints catch up,
    // and another replica then finds the session where this one left it.
    let _redis = Redis::start_on(rport);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = common::process::http_get(metrics_addr, "/metrics")
            .await
            .expect("metrics");
        if body.contains("gru_session_store_up 1") {
            break;
        }
        assert!(Instant::now() < deadline, "store_up never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.extend(step_at(&mut ca, &id, &x, 4).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut b, mut cb, _) =
        start(repo.path(), &format!("redis://127.0.0.1:{rport}"), "100ms").await;
    for t in 5..8 {
        out.extend(step_at(&mut cb, &id, &x, t).await.unwrap());
    }
    let want = predict(&mut cb, &x).await;
    assert_close("across the outage", &out, &want);
    a.terminate().await;
    b.terminate().await;
}

#[test]
fn a_bad_session_store_fails_at_start_naming_it() {
    for (value, needle) in [
        ("redis//nohost", "unknown session store"),
        ("postgres://db/x", "unknown session store"),
        ("redis://:pw@[::1", "not a Redis URL"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gru-serve"))
            .args(["--session-store", value, "--model-dir", "/nonexistent"])
            .output()
            .expect("run gru-serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {err}");
        assert!(
            err.contains("--session-store") && err.contains(needle),
            "{value}: {err}"
        );
        assert!(
            !err.contains(":pw@"),
            "a password never reaches the terminal: {err}"
        );
    }
}

/// One StepStream on replica B carrying sessions opened on replica A (each
/// with its own key): B takes each over on its first message; every reply
/// is right, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_carries_sessions_opened_on_another_replica() {
    use tokio_stream::StreamExt;
    let redis = Redis::start_on(free_port());
    let repo = small_repo();
    let (mut a, mut ca, _) = start(repo.path(), &redis.url(), "1s").await;
    let (mut b, mut cb, _) = start(repo.path(), &redis.url(), "1s").await;
    let n = 10;
    let xs: Vec<Vec<f32>> = (0..n).map(|k| rand_vec(3 * I, 900 + k as u64)).collect();
    let mut ids = Vec::new();
    let mut got: Vec<Vec<f32>> = vec![Vec::new(); n];
    for k in 0..n {
        let id = open_key(&mut ca, &format!("many-{k}")).await.session_id;
        got[k].extend(step_at(&mut ca, &id, &xs[k], 0).await.unwrap());
        ids.push(id);
    }
    // No wait for a checkpoint: A has written nothing since the opens, so
    // B's copies start at step 0, and the stream says so per session.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut replies = cb
        .step_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    for k in 0..n {
        let mut req = step_req(&ids[k], &xs[k][..I], k as u64);
        req.has_start_step = true;
        tx.send(req).await.unwrap();
    }
    for (k, had) in got.iter().enumerate() {
        let r = replies.next().await.expect("reply").expect("stream ok");
        assert_eq!(r.request_id, k as u64, "replies in request order");
        match r.result {
            Some(pb::step_response::Result::Ok(ok)) => {
                assert_close(
                    "taken over at step 0",
                    &ok.outputs.unwrap().values,
                    &had[..O],
                );
            }
            other => panic!("session {k}: {other:?}"),
        }
    }
    drop(tx);
    a.terminate().await;
    b.terminate().await;
}

/// The fence itself, without the takeover notices (in-process engines
/// spawn no listener): a replica whose copy is stale has its checkpoint
/// refused, drops the copy, and its next call takes the stored one over —
/// its own diverging steps are never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replicas_write_is_refused_and_its_copy_dropped() {
    let redis = Redis::start_on(free_port());
    let repo = small_repo();
    let engine = || redis_engine(repo.path(), &redis);
    let (a, b) = (engine(), engine());
    let x = rand_vec(3 * I, 3);
    let row = |t: usize| one_row(&x, t);
    let id = stepped_and_stored(&a, row(0)).await;
    // B takes it over (epoch 2) and steps; A, unaware, steps its own copy.
    b.step(&id, None, row(1)).await.unwrap();
    b.flush_sessions().await.unwrap();
    let forked = a.step(&id, None, row(1)).await.unwrap();
    assert_eq!(a.live_sessions(), 1);
    assert_eq!(a.flush_sessions().await.unwrap(), 0, "A's write is refused");
    assert_eq!(a.live_sessions(), 0, "and its stale copy dropped");
    // A's next call goes through the store: it finds B's history (at 2),
    // not its own fork.
    let s = a.session(&id, None).await.unwrap();
    assert_eq!(s.export().step_index, 2);
    // Step 1 again is a retry of B's last message: answered from B's kept
    // reply (the same outputs the fork computed), not applied a third time.
    let again = a.step(&id, None, row(1)).await.unwrap();
    assert!(again.replayed);
    assert_close("B's reply", &again.outcome.outputs, &forked.outcome.outputs);
    let e = a.step(&id, None, row(0)).await.unwrap_err();
    assert!(e.to_string().contains("is at step 2"), "{e}");
    // And B, now fenced out in turn, finds out at its next write.
    b.step(&id, None, row(2)).await.unwrap();
    assert_eq!(b.flush_sessions().await.unwrap(), 0);
    assert_eq!(b.live_sessions(), 0);
    a.shutdown();
    b.shutdown();
}

/// A replica that does not serve a session's model refuses it (naming the
/// model) without taking it over: the owner keeps its copy and its epoch,
/// so its next write is accepted and its next step needs no takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_model_refuses_a_session_and_leaves_it_to_its_owner() {
    use gru_serve::engine::EngineError;
    let redis = Redis::start_on(free_port());
    let repo = small_repo();
    let elsewhere = tempfile::TempDir::new().unwrap();
    common::server::write_model(
        elsewhere.path(),
        "n",
        1,
        gru_serve::model::ModelConfig::new(3, 8, 2).with_head(2),
        7,
    );
    let a = redis_engine(repo.path(), &redis);
    let b = redis_engine(elsewhere.path(), &redis);
    let x = rand_vec(2 * I, 4);
    let row = |t: usize| one_row(&x, t);
    let id = stepped_and_stored(&a, row(0)).await;
    for attempt in 0..2 {
        let refused = match attempt {
            0 => b.session(&id, None).await.map(|_| ()),
            _ => b.step(&id, None, row(1)).await.map(|_| ()),
        };
        match refused {
            Err(e @ EngineError::SessionModelNotServed { .. }) => {
                assert!(e.to_string().contains("'m'"), "names the model: {e}")
            }
            other => panic!("attempt {attempt}: want SessionModelNotServed, got {other:?}"),
        }
    }
    assert_eq!(b.live_sessions(), 0);
    // A was not fenced out: it steps its own copy and its write is taken.
    a.step(&id, None, row(1)).await.unwrap();
    assert_eq!(a.live_sessions(), 1);
    assert_eq!(
        a.flush_sessions().await.unwrap(),
        1,
        "A's write is accepted"
    );
    assert_eq!(a.live_sessions(), 1, "and its copy kept");
    a.shutdown();
    b.shutdown();
}

/// A session's tenant travels with it: another tenant cannot take it over
/// from the store (NOT_FOUND, exactly like a missing id), its own can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_travels_with_the_session_between_replicas() {
    use gru_serve::engine::EngineError;
    let redis = Redis::start_on(free_port());
    let repo = small_repo();
    let engine = || redis_engine(repo.path(), &redis);
    let (a, b) = (engine(), engine());
    let (s, _) = open_keyed(&a, "alice").await;
    let id = s.id.clone();
    drop(s);
    assert_eq!(a.flush_sessions().await.unwrap(), 1);
    for wrong in [Some("bob"), None] {
        match b.session(&id, wrong).await {
            Err(EngineError::SessionNotFound(_)) => {}
            other => panic!(
                "{wrong:?} must not reach alice's session: {:?}",
                other.map(|s| s.id.clone())
            ),
        }
    }
    assert_eq!(b.live_sessions(), 0, "no takeover for another tenant");
    // Bob's key space is his own: the same key opens a new session for him.
    let (bobs, created) = open_keyed(&b, "bob").await;
    assert!(created && bobs.id != id);
    // Alice reaches hers from replica B, by id and by key.
    let s = b.session(&id, Some("alice")).await.unwrap();
    assert_eq!(s.id, id);
    let (again, created) = open_keyed(&b, "alice").await;
    assert!(!created);
    assert_eq!(again.id, id);
    a.shutdown();
    b.shutdown();
}

/// Row `t` of `x` as a one-step message at step index `t`.
fn one_row(x: &[f32], t: usize) -> gru_serve::engine::StepInput {
    gru_serve::engine::StepInput {
        inputs: x[t * I..(t + 1) * I].to_vec(),
        rows: 1,
        cols: I,
        start_step: Some(t as u64),
    }
}

/// A session of model "m" opened on `e`, stepped with `first` and written to
/// the store; its id.
async fn stepped_and_stored(
    e: &gru_serve::engine::Engine,
    first: gru_serve::engine::StepInput,
) -> String {
    let (s, _) = e
        .open_session("m", None, None, None, None, None)
        .await
        .unwrap();
    let id = s.id.clone();
    drop(s);
    e.step(&id, None, first).await.unwrap();
    assert_eq!(e.flush_sessions().await.unwrap(), 1);
    id
}

/// An in-process engine on `redis` with no checkpoint task (the tests write
/// with `flush_sessions`) and no takeover listener.
/// Opens (or finds) `tenant`'s session with key "k" on model "m".
async fn open_keyed(
    e: &gru_serve::engine::Engine,
    tenant: &str,
) -> (std::sync::Arc<gru_serve::engine::Session>, bool) {
    e.open_session("m", None, Some("k".into()), Some(tenant.into()), None, None)
        .await
        .unwrap()
}

fn redis_engine(models: &Path, redis: &Redis) -> gru_serve::engine::Engine {
    use gru_serve::engine::{Engine, EngineConfig, StoreConfig, StoreSpec};
    Engine::load(EngineConfig {
        model_dir: models.to_path_buf(),
        store: StoreConfig {
            spec: StoreSpec::Redis(redis.url()),
            checkpoint_interval: Duration::from_secs(3600),
            state_dir: None,
        },
        ..Default::default()
    })
    .unwrap()
}
