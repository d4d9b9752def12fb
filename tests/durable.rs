//! Sessions that survive the process (the file session store): the real
//! binary, stopped with SIGTERM or killed with SIGKILL, then started again on
//! the same folders. Every session must end with exactly the outputs of an
//! uninterrupted run (Predict over the whole sequence), no step applied twice.

#![cfg(feature = "grpc")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{free_port, Spawned};
use common::server::{
    assert_close, assert_status, expect_err, matrix, rand_vec, small_repo, step_req, Client,
    TestServer,
};
use gru_serve::service::pb;
use tonic::Code;

const I: usize = 3;
const O: usize = 2;
/// Steps per session in each test.
const T: usize = 12;

fn spawn(repo: &Path, port: u16, extra: &[&str]) -> Spawned {
    Spawned(
        Command::new(env!("CARGO_BIN_EXE_gru-serve"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--model-dir")
            .arg(repo)
            .args(["--metrics-listen", "off", "--log-format", "json"])
            .args(extra)
            .env_remove("GRU_LOG")
            .env_remove("GRU_SESSION_STORE")
            .env_remove("GRU_CHECKPOINT_INTERVAL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gru-serve"),
    )
}

async fn start(repo: &Path, port: u16, extra: &[&str]) -> (Spawned, Client) {
    let mut s = spawn(repo, port, extra);
    let ch = s.wait_serving(&format!("http://127.0.0.1:{port}")).await;
    (s, Client::new(ch))
}

fn kill9(s: &mut Spawned) {
    let pid = s.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    let _ = s.0.wait();
}

/// The reference: Predict over each whole sequence, on the same model.
async fn reference(c: &mut Client, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let r = c
        .predict(pb::PredictRequest {
            model: "m".into(),
            sequences: inputs
                .iter()
                .map(|x| pb::PredictSequence {
                    inputs: Some(matrix(x.len() / I, I, x.clone())),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .expect("predict")
        .into_inner();
    r.outputs
        .into_iter()
        .map(|o| o.outputs.expect("outputs").values)
        .collect()
}

/// Opens (or re-finds) the session with `key`: (id, step index, created).
async fn open_key(c: &mut Client, key: &str) -> (String, u64, bool) {
    let r = c
        .open_session(pb::OpenSessionRequest {
            model: "m".into(),
            session_key: key.into(),
            ..Default::default()
        })
        .await
        .expect("open by key")
        .into_inner();
    (r.session_id, r.step_index, r.created)
}

/// Step `t` (one row) of a session, exactly once: `start_step = t`.
async fn step_at(
    c: &mut Client,
    id: &str,
    x: &[f32],
    t: usize,
) -> Result<pb::StepResponse, tonic::Status> {
    let mut req = step_req(id, &x[t * I..(t + 1) * I], t as u64);
    req.start_step = t as u64;
    req.has_start_step = true;
    c.step(req).await.map(|r| r.into_inner())
}

fn outputs(r: &pb::StepResponse) -> Vec<f32> {
    match &r.result {
        Some(pb::step_response::Result::Ok(ok)) => ok.outputs.clone().expect("outputs").values,
        other => panic!("step failed: {other:?}"),
    }
}

/// Reads the server's JSON log until a line contains `needle` (20 s).
fn wait_log(s: &mut Spawned, needle: &str) -> String {
    let out = s.0.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains(&needle) {
                let _ = tx.send(line);
                return;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("log line not seen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_50_sessions_then_restart_every_session_continues_exactly() {
    // No store flag: the default, a file store under the model directory.
    let repo = small_repo();
    let port = free_port();
    let (mut server, mut c) = start(repo.path(), port, &["--checkpoint-interval", "1h"]).await;
    let n = 50;
    let inputs: Vec<Vec<f32>> = (0..n).map(|k| rand_vec(T * I, 100 + k as u64)).collect();
    let want = reference(&mut c, &inputs).await;
    let mut ids = Vec::new();
    let mut got: Vec<Vec<f32>> = vec![Vec::new(); n];
    let half = T / 2;
    for k in 0..n {
        let (id, at, created) = open_key(&mut c, &format!("key-{k}")).await;
        assert!(created && at == 0);
        for t in 0..half {
            got[k].extend(outputs(&step_at(&mut c, &id, &inputs[k], t).await.unwrap()));
        }
        ids.push(id);
    }
    // A checkpoint interval of an hour: only the shutdown flush writes them.
    server.terminate().await;
    assert!(
        repo.path().join(".sessions").is_dir(),
        "the default store lives in the model directory's .sessions"
    );

    let (mut server, mut c) = start(repo.path(), port, &["--checkpoint-interval", "1h"]).await;
    for k in 0..n {
        let (id, at, created) = open_key(&mut c, &format!("key-{k}")).await;
        assert_eq!(
            (id.as_str(), at, created),
            (ids[k].as_str(), half as u64, false),
            "session {k} comes back under its id, at its step"
        );
        // A retry of the last message before the restart is still answered
        // from its kept reply, not applied again.
        let retry = step_at(&mut c, &id, &inputs[k], half - 1).await.unwrap();
        assert_close(
            "retried reply",
            &outputs(&retry),
            &got[k][(half - 1) * O..half * O],
        );
        for t in half..T {
            got[k].extend(outputs(&step_at(&mut c, &id, &inputs[k], t).await.unwrap()));
        }
        assert_close(&format!("session {k}"), &got[k], &want[k]);
    }
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_traffic_then_restart_resumes_at_the_checkpoint_and_replay_is_exact() {
    let repo = small_repo();
    let state = tempfile::TempDir::new().unwrap();
    let store = format!("file:{}", state.path().display());
    let args = ["--session-store", &store, "--checkpoint-interval", "100ms"];
    let port = free_port();
    let (mut server, mut c) = start(repo.path(), port, &args).await;
    let n = 20;
    let inputs: Vec<Vec<f32>> = (0..n).map(|k| rand_vec(T * I, 300 + k as u64)).collect();
    let want = reference(&mut c, &inputs).await;
    let mut ids = Vec::new();
    let mut got: Vec<Vec<f32>> = vec![Vec::new(); n];
    for k in 0..n {
        let (id, _, _) = open_key(&mut c, &format!("k{k}")).await;
        for t in 0..4 {
            got[k].extend(outputs(&step_at(&mut c, &id, &inputs[k], t).await.unwrap()));
        }
        ids.push(id);
    }
    // Let a checkpoint cover step 4, then keep stepping and kill mid-way:
    // what came after the last checkpoint is lost to the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for k in 0..n {
        for t in 4..8 {
            got[k].extend(outputs(
                &step_at(&mut c, &ids[k], &inputs[k], t).await.unwrap(),
            ));
        }
    }
    kill9(&mut server);
    drop(server);

    let (mut server, mut c) = start(repo.path(), port, &args).await;
    for k in 0..n {
        let (id, at, created) = open_key(&mut c, &format!("k{k}")).await;
        assert!(!created, "session {k} is restored, not opened anew");
        assert_eq!(id, ids[k]);
        assert!((4..=8).contains(&at), "session {k} at {at}");
        // A message that does not say where it starts is refused: after a
        // crash the server cannot know what the client sent since.
        let blind = expect_err(
            "a step without start_step after a crash",
            c.step(step_req(&id, &inputs[k][8 * I..9 * I], 0)).await,
        );
        assert_status(
            "a step without start_step after a crash",
            &blind,
            Code::FailedPrecondition,
            &[
                format!("is at step {at}").as_str(),
                "recovered from a checkpoint",
            ],
        );
        // The client goes on at 8; a session behind says where it is.
        let r = step_at(&mut c, &id, &inputs[k], 8).await;
        let from = match r {
            Ok(resp) if at == 8 => {
                got[k].extend(outputs(&resp));
                9
            }
            Ok(_) => panic!("session {k} at {at} accepted step 8"),
            Err(s) => {
                assert_status(
                    "behind after a crash",
                    &s,
                    Code::FailedPrecondition,
                    &[format!("is at step {at}").as_str()],
                );
                // Replay from the reported index: the outputs must be the
                // ones the client already had.
                for t in at as usize..8 {
                    let again = outputs(&step_at(&mut c, &id, &inputs[k], t).await.unwrap());
                    assert_close("replayed step", &again, &got[k][t * O..(t + 1) * O]);
                }
                8
            }
        };
        for t in from..T - 1 {
            got[k].extend(outputs(&step_at(&mut c, &id, &inputs[k], t).await.unwrap()));
        }
        // Once a message named its start, plain steps go on.
        let last = c
            .step(step_req(&id, &inputs[k][(T - 1) * I..], 0))
            .await
            .expect("a plain step once confirmed")
            .into_inner();
        got[k].extend(outputs(&last));
        assert_close(&format!("session {k}"), &got[k], &want[k]);
        let (_, at, _) = open_key(&mut c, &format!("k{k}")).await;
        assert_eq!(at, T as u64, "no step applied twice");
    }
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_is_reported_set_aside_and_the_server_starts() {
    let repo = small_repo();
    let state = tempfile::TempDir::new().unwrap();
    let store = format!("file:{}", state.path().display());
    let args = ["--session-store", &store, "--checkpoint-interval", "1h"];
    let port = free_port();
    let (mut server, mut c) = start(repo.path(), port, &args).await;
    let (id, _, _) = open_key(&mut c, "a").await;
    step_at(&mut c, &id, &rand_vec(I, 1), 0).await.unwrap();
    server.terminate().await;
    let files: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gsnap"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x5a;
    std::fs::write(&files[0], bytes).unwrap();

    let mut server = spawn(repo.path(), port, &args);
    let line = wait_log(&mut server, "session checkpoint unreadable");
    assert!(line.contains("checksum mismatch"), "{line}");
    let mut c = Client::new(
        server
            .wait_serving(&format!("http://127.0.0.1:{port}"))
            .await,
    );
    let lost = expect_err(
        "the corrupt file's session",
        c.get_session_state(pb::GetSessionStateRequest {
            session_id: id.clone(),
        })
        .await,
    );
    assert_status("not restored", &lost, Code::NotFound, &[id.as_str()]);
    assert!(
        files[0].with_extension("gsnap.corrupt").exists(),
        "kept aside for inspection"
    );
    // And the server serves: a new session steps.
    let (id, _, created) = open_key(&mut c, "a").await;
    assert!(created);
    step_at(&mut c, &id, &rand_vec(I, 1), 0).await.unwrap();
    server.terminate().await;
}

/// GetSessionState's snapshot carries the whole session: resumed from it,
/// a session goes on at its step, and a retry of the last message before
/// the snapshot is answered from the kept reply.
#[tokio::test]
async fn a_snapshot_from_get_session_state_resumes_with_its_last_reply() {
    let repo = small_repo();
    let server = TestServer::serving(repo.path()).await;
    let mut c = server.client();
    let x = rand_vec(4 * I, 9);
    let (id, _, _) = open_key(&mut c, "snap").await;
    let mut got = Vec::new();
    for t in 0..3 {
        got.extend(outputs(&step_at(&mut c, &id, &x, t).await.unwrap()));
    }
    let snap = c
        .get_session_state(pb::GetSessionStateRequest { session_id: id })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert_eq!((snap.format, snap.step_index), (1, 3));
    let resumed = c
        .open_session(pb::OpenSessionRequest {
            resume_snapshot: Some(snap.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.step_index, 3);
    let retry = step_at(&mut c, &resumed.session_id, &x, 2).await.unwrap();
    assert_close(
        "retry answered from the snapshot",
        &outputs(&retry),
        &got[2 * O..],
    );
    let next = step_at(&mut c, &resumed.session_id, &x, 3).await.unwrap();
    let want = reference(&mut c, std::slice::from_ref(&x)).await;
    assert_close("continued", &outputs(&next), &want[0][3 * O..]);

    let mut bad = snap;
    bad.format = 7;
    let e = expect_err(
        "unknown format",
        c.open_session(pb::OpenSessionRequest {
            resume_snapshot: Some(bad),
            ..Default::default()
        })
        .await,
    );
    assert_status("unknown format", &e, Code::InvalidArgument, &["format 7"]);
    server.stop().await;
}
