#![cfg(feature = "grpc")]
//! README promises about limits and connections, each against the real
//! server on 127.0.0.1:0.
//!
//! Where the expectations come from: README's "Errors" paragraph
//! (RESOURCE_EXHAUSTED for full queues and the stream cap; INVALID_ARGUMENT
//! for limits, the message naming the values), its configuration table
//! (`--queue-capacity`, `--max-streams`, `--max-predict-sequences`,
//! `--max-predict-steps`, `--request-timeout-secs`,
//! `--max-streams-per-connection`, `--http2-keepalive-secs` /
//! `--http2-keepalive-timeout-secs`: "an unanswered one closes the
//! connection"), "Model repository" ("a broken one is retried only once its
//! files change") and "Training over gRPC" ("the same request gives the same
//! weights bit for bit"). Waits are polls or reads bounded by `WAIT`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use gru_serve::formats::native::save_native;
use gru_serve::model::{GruModel, ModelConfig};
use gru_serve::service::pb;
use gru_serve::service::pb::training_service_client::TrainingServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

mod common;
use common::server::*;

/// The small model of `small_repo`: I = 3 inputs, head O = 2.
const I: usize = 3;

async fn serving(config: gru_serve::server::ServerConfig) -> TestServer {
    let s = TestServer::start(config).await;
    s.wait_serving().await;
    s
}

// ---------------------------------------------------------------- queue and stream caps

/// `--queue-capacity`: with room for 2 pending messages, messages that arrive
/// while the worker runs a long one (and 2 already wait) are refused with
/// RESOURCE_EXHAUSTED naming the model and the limit, as per-message stream
/// errors; a refused message does not advance its session, and the worker
/// serves again once the queue drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_queue_is_resource_exhausted() {
    const CAPACITY: usize = 2;
    const BURST: usize = 16;
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.engine.queue_capacity = CAPACITY;
    // One message per batch: the worker holds at most 2 taken from the queue.
    config.engine.max_batch = 1;
    let server = serving(config).await;
    let mut c = server.client();
    let gate = open_latest(&mut c, "m").await.session_id;
    let s = open_latest(&mut c, "m").await.session_id;
    let (tx, rx) = mpsc::channel(64);
    let mut replies = c
        .step_stream(ReceiverStream::new(rx))
        .await
        .expect("open step stream")
        .into_inner();
    let (mut accepted, mut refused) = (0u64, 0u64);
    let deadline = tokio::time::Instant::now() + WAIT;
    while refused == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message was refused with {CAPACITY} queue places: the queue is not bounded"
        );
        // A long message keeps the worker busy while the burst arrives.
        tx.send(step_req(&gate, rand_vec(2048 * I, 1), 0))
            .await
            .unwrap();
        for n in 1..=BURST {
            tx.send(step_req(&s, rand_vec(I, n as u64), n as u64))
                .await
                .unwrap();
        }
        for n in 0..=BURST {
            let r = common::sessions::reply(&mut replies).await;
            assert_eq!(r.request_id, n as u64, "replies in request order");
            match r.result.expect("a result") {
                pb::step_response::Result::Ok(ok) => {
                    if n > 0 {
                        assert_eq!(ok.start_step, accepted, "refused messages do not advance");
                        accepted += 1;
                    }
                }
                pb::step_response::Result::Error(e) => {
                    assert!(n > 0, "the gate message found the queue full: {e:?}");
                    assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}");
                    assert!(
                        e.message.contains("model 'm/1'")
                            && e.message.contains(&format!("{CAPACITY} requests queued")),
                        "the refusal names the model and the limit: {:?}",
                        e.message
                    );
                    refused += 1;
                }
            }
        }
    }
    drop(tx);
    assert!(accepted >= 1, "the queue took nothing");
    let r = c
        .step(step_req(&s, rand_vec(I, 99), 0))
        .await
        .expect("a step once the queue drained")
        .into_inner();
    match r.result {
        Some(pb::step_response::Result::Ok(ok)) => assert_eq!(ok.start_step, accepted),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

/// `--max-streams`: with a cap of 1, a second StepStream is refused with
/// RESOURCE_EXHAUSTED while the first is open (unary Step still works), and
/// opens once the first has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_cap_is_resource_exhausted_until_a_stream_ends() {
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.max_streams = 1;
    let server = serving(config).await;
    let mut c = server.client();
    let id = open_latest(&mut c, "m").await.session_id;
    let (tx, rx) = mpsc::channel(4);
    let mut first = c
        .step_stream(ReceiverStream::new(rx))
        .await
        .expect("the first stream opens")
        .into_inner();
    tx.send(step_req(&id, rand_vec(I, 1), 1)).await.unwrap();
    let r = first.message().await.unwrap().expect("a reply");
    assert!(matches!(r.result, Some(pb::step_response::Result::Ok(_))));

    let (_tx2, rx2) = mpsc::channel::<pb::StepRequest>(4);
    let refused = expect_err(
        "a second stream over the cap",
        c.step_stream(ReceiverStream::new(rx2)).await,
    );
    assert_status(
        "a second stream",
        &refused,
        Code::ResourceExhausted,
        &["too many open streams"],
    );
    c.step(step_req(&id, rand_vec(I, 2), 2))
        .await
        .expect("unary Step is not capped by the stream cap");

    drop(tx);
    let end = tokio::time::timeout(WAIT, first.message())
        .await
        .expect("the first stream ends in time");
    assert!(matches!(end, Ok(None)), "{end:?}");
    // The permit is released by the stream's own task: poll.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (tx3, rx3) = mpsc::channel(4);
        match c.step_stream(ReceiverStream::new(rx3)).await {
            Ok(s) => {
                let mut s = s.into_inner();
                tx3.send(step_req(&id, rand_vec(I, 3), 3)).await.unwrap();
                let r = s.message().await.unwrap().expect("a reply");
                assert!(matches!(r.result, Some(pb::step_response::Result::Ok(_))));
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the ended stream's place was never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    server.stop().await;
}

// ---------------------------------------------------------------- Predict limits

fn predict_req(lens: &[usize]) -> pb::PredictRequest {
    pb::PredictRequest {
        model: "m".into(),
        sequences: lens
            .iter()
            .enumerate()
            .map(|(n, &len)| pb::PredictSequence {
                inputs: Some(matrix(len, I, rand_vec(len * I, n as u64))),
                initial_state: None,
            })
            .collect(),
        ..Default::default()
    }
}

/// `--max-predict-sequences 2`, `--max-predict-steps 6`: a Predict at both
/// limits is answered; one sequence or one step over is INVALID_ARGUMENT
/// naming the count and the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_limits_refuse_with_the_count_and_the_limit() {
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.engine.max_predict_sequences = 2;
    config.engine.max_predict_steps = 6;
    let server = serving(config).await;
    let mut c = server.client();
    let at_limits = c
        .predict(predict_req(&[2, 4]))
        .await
        .expect("2 sequences of 6 steps in all")
        .into_inner();
    assert_eq!(at_limits.outputs.len(), 2);
    let s = expect_err("3 sequences", c.predict(predict_req(&[1, 1, 1])).await);
    assert_status(
        "3 sequences",
        &s,
        Code::InvalidArgument,
        &["sequences: 3 given", "1..=2"],
    );
    let s = expect_err("7 steps", c.predict(predict_req(&[3, 4])).await);
    assert_status(
        "7 steps",
        &s,
        Code::InvalidArgument,
        &["7 steps in total", "at most 6"],
    );
    server.stop().await;
}

// ---------------------------------------------------------------- request timeout

/// `--request-timeout-secs`: a call whose handler does not finish within the
/// deadline is ended by the server. The slow call is an UploadTraining whose
/// client never sends: deterministic, no compute. tonic ends it with
/// CANCELLED "Timeout expired" (the README names no code). A StepStream
/// opened before it, and so older than the deadline, still serves: the
/// deadline covers only a stream's opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_request_timeout_is_ended_but_open_streams_are_not() {
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.request_timeout = Some(Duration::from_millis(300));
    let server = serving(config).await;
    let mut c = server.client();
    let id = open_latest(&mut c, "m").await.session_id;
    let (tx, rx) = mpsc::channel(4);
    let mut stream = c
        .step_stream(ReceiverStream::new(rx))
        .await
        .expect("open step stream")
        .into_inner();

    let (_upload_tx, upload_rx) = mpsc::channel::<pb::TrainingUpload>(1);
    let mut t = TrainingServiceClient::new(server.channel.clone());
    let ended = tokio::time::timeout(WAIT, t.upload_training(ReceiverStream::new(upload_rx)))
        .await
        .expect("the server ends a call that outlives the request timeout");
    let s = expect_err("a stalled upload", ended);
    assert_status(
        "a stalled upload",
        &s,
        Code::Cancelled,
        &["Timeout expired"],
    );

    tx.send(step_req(&id, rand_vec(I, 1), 7)).await.unwrap();
    let r = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a reply in time")
        .expect("the stream outlived the request timeout")
        .expect("a reply");
    assert_eq!(r.request_id, 7);
    assert!(matches!(r.result, Some(pb::step_response::Result::Ok(_))));
    drop(tx);
    server.stop().await;
}

// ---------------------------------------------------------------- HTTP/2 settings and keepalive

/// One HTTP/2 frame: (type, flags, payload).
type Frame = (u8, u8, Vec<u8>);

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut f = vec![
        (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
        kind,
        flags,
        0,
        0,
        0,
        0,
    ];
    f.extend_from_slice(payload);
    f
}

/// The next frame, or None once the server has closed the connection.
async fn read_frame(s: &mut tokio::net::TcpStream) -> Option<Frame> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.ok()?;
    let n = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; n];
    s.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

/// Reads frames until one satisfies `want` (bounded by WAIT).
async fn frame_where(
    s: &mut tokio::net::TcpStream,
    what: &str,
    want: impl Fn(&Frame) -> bool,
) -> Frame {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match read_frame(s).await {
                Some(f) if want(&f) => return f,
                Some(_) => {}
                None => panic!("the connection closed while waiting for {what}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("waited {WAIT:?} for {what} in vain"))
}

/// `--max-streams-per-connection` and the keepalive flags reach the wire,
/// seen by a hand-written HTTP/2 client: the server's SETTINGS carry
/// MAX_CONCURRENT_STREAMS = 7; on a quiet connection the server pings every
/// interval (200 ms here; tonic's default is no pings); a ping answered keeps
/// the connection, and one left unanswered closes it after the keepalive
/// timeout (300 ms here; tonic's default of 20 s would outlast the wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_limit_and_keepalive_reach_the_wire() {
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.max_concurrent_streams_per_connection = 7;
    config.http2_keepalive_interval = Some(Duration::from_millis(200));
    config.http2_keepalive_timeout = Duration::from_millis(300);
    let server = serving(config).await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();

    let (_, _, settings) = frame_where(&mut s, "the server's SETTINGS", |f| {
        f.0 == SETTINGS && f.1 & ACK == 0
    })
    .await;
    let max_streams = settings
        .chunks_exact(6)
        .find(|p| u16::from_be_bytes([p[0], p[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
    assert_eq!(max_streams, Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS");
    s.write_all(&frame(SETTINGS, ACK, &[])).await.unwrap();

    let is_ping = |f: &Frame| f.0 == PING && f.1 & ACK == 0;
    let (_, _, data) = frame_where(&mut s, "a keepalive PING", is_ping).await;
    s.write_all(&frame(PING, ACK, &data)).await.unwrap();
    frame_where(&mut s, "a PING after an answered one", is_ping).await;
    // Left unanswered: the server must close the connection.
    let closed =
        tokio::time::timeout(WAIT, async { while read_frame(&mut s).await.is_some() {} }).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open {WAIT:?} after an unanswered PING"
    );
    server.stop().await;
}

// ---------------------------------------------------------------- broken versions

/// Newest modification time of a folder and its files (what the registry compares).
fn newest_mtime(dir: &Path) -> SystemTime {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().modified().unwrap())
        .chain([std::fs::metadata(dir).unwrap().modified().unwrap()])
        .max()
        .unwrap()
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::open(path).unwrap().set_modified(t).unwrap();
}

async fn versions(c: &mut Client, name: &str) -> Vec<u64> {
    c.list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| m.versions)
        .unwrap_or_default()
}

async fn wait_versions(c: &mut Client, name: &str, want: &[u64]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = versions(c, name).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "model '{name}' serves {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A version folder that failed to load is not retried while its files stay
/// as they were, even once they would load; it is retried, and served, once
/// they change. The fixed folder is swapped in whole with the broken one's
/// modification times, so only the times tell the two apart. Rescans are
/// observed through two probe versions: the one that serves `probe/2`
/// started after `probe/1` was served, hence after the swap, and visited
/// `m` before `probe`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_version_is_retried_only_once_its_files_change() {
    let repo = small_repo();
    let m = repo.path().join("m");
    std::fs::create_dir_all(m.join("2")).unwrap();
    std::fs::write(m.join("2/config.json"), b"{not json").unwrap();
    let broken_at = newest_mtime(&m.join("2"));
    let mut config = config_for(repo.path());
    config.engine.model_poll = Duration::from_millis(20);
    let server = serving(config).await;
    let mut c = server.client();
    assert_eq!(
        versions(&mut c, "m").await,
        vec![1],
        "the broken version was served"
    );

    // A loadable version 2, staged in a dot-folder (never scanned), with
    // every time set to the broken folder's, swapped in.
    let staged = m.join(".fixed");
    let model = GruModel::init(
        ModelConfig::new(3, 8, 2).with_head(2),
        8,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    save_native(&model, &staged).unwrap();
    for e in std::fs::read_dir(&staged).unwrap().flatten() {
        set_mtime(&e.path(), broken_at);
    }
    set_mtime(&staged, broken_at);
    std::fs::rename(m.join("2"), m.join(".broken")).unwrap();
    std::fs::rename(&staged, m.join("2")).unwrap();
    assert_eq!(
        newest_mtime(&m.join("2")),
        broken_at,
        "test set-up: renaming changed the folder's time on this file system"
    );

    write_model(repo.path(), "probe", 1, ModelConfig::new(2, 4, 1), 1);
    wait_versions(&mut c, "probe", &[1]).await;
    write_model(repo.path(), "probe", 2, ModelConfig::new(2, 4, 1), 2);
    wait_versions(&mut c, "probe", &[1, 2]).await;
    assert_eq!(
        versions(&mut c, "m").await,
        vec![1],
        "an unchanged failed folder was retried"
    );

    set_mtime(&m.join("2/config.json"), SystemTime::now());
    wait_versions(&mut c, "m", &[1, 2]).await;
    let info = c
        .get_model(pb::GetModelRequest {
            model: "m".into(),
            version: 2,
        })
        .await
        .expect("version 2 is served")
        .into_inner();
    assert_eq!(info.model.unwrap().version, 2);
    server.stop().await;
}

// ---------------------------------------------------------------- training determinism

/// Runs a training job to its end; returns the published version.
async fn train(
    t: &mut TrainingServiceClient<tonic::transport::Channel>,
    req: pb::StartTrainingRequest,
) -> u64 {
    let id = t
        .start_training(req)
        .await
        .expect("start training")
        .into_inner()
        .job_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let j = t
            .get_training_job(pb::GetTrainingJobRequest { job_id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        let state = pb::JobState::try_from(j.state).unwrap();
        match state {
            pb::JobState::Succeeded => return j.result.expect("a result").version,
            pb::JobState::Queued | pb::JobState::Running => {}
            other => panic!("job {id} ended {other:?}: {}", j.error),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two identical StartTraining requests (same seed) publish byte-identical
/// weights; the same request with another seed publishes different ones (so
/// the equality is not that of an untrained or constant model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_training_request_publishes_the_same_weights_bit_for_bit() {
    let repo = small_repo();
    let server = TestServer::serving(repo.path()).await;
    let mut t = TrainingServiceClient::new(server.channel.clone());
    let sequences: Vec<pb::TrainingSequence> = (0..8)
        .map(|n| {
            let len = 4 + n % 3;
            pb::TrainingSequence {
                inputs: Some(matrix(len, 2, rand_vec(len * 2, 10 + n as u64))),
                targets: Some(matrix(len, 1, rand_vec(len, 20 + n as u64))),
                ..Default::default()
            }
        })
        .collect();
    let request = |seed: u64| pb::StartTrainingRequest {
        model: "det".into(),
        new_model: Some(pb::ModelSpec {
            input_size: 2,
            hidden_size: 4,
            num_layers: 1,
            output_size: 1,
            ..Default::default()
        }),
        hyperparameters: Some(pb::Hyperparameters {
            epochs: 2,
            batch_size: 3,
            seed,
            ..Default::default()
        }),
        sequences: sequences.clone(),
        ..Default::default()
    };
    let weights = |v: u64| {
        std::fs::read(repo.path().join(format!("det/{v}/model.safetensors")))
            .expect("published weights")
    };
    let a = train(&mut t, request(5)).await;
    let b = train(&mut t, request(5)).await;
    let other = train(&mut t, request(6)).await;
    assert_eq!((a, b, other), (1, 2, 3));
    assert!(
        weights(a) == weights(b),
        "the same request published different weights"
    );
    assert!(
        weights(a) != weights(other),
        "another seed published the same weights"
    );
    server.stop().await;
}

// ---------------------------------------------------------------- health

/// Health follows what is served: on a repository with nothing loadable the
/// server is NOT_SERVING; the `--model-poll-secs` rescan that loads the first
/// model turns it SERVING at once (README: "NOT_SERVING until a model is
/// loaded"), not at the next session sweep (every 30 s at the default TTL,
/// longer than the wait here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rescan_that_loads_the_first_model_turns_health_serving() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = config_for(dir.path());
    config.engine.model_poll = Duration::from_millis(20);
    let server = TestServer::start(config).await;
    let mut c = server.client();
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(s) = c.list_models(pb::ListModelsRequest {}).await {
        assert_eq!(s.code(), Code::Unavailable, "while loading: {s:?}");
        assert!(tokio::time::Instant::now() < deadline, "never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.health("").await.unwrap(),
        ServingStatus::NotServing as i32
    );
    write_model(
        dir.path(),
        "m",
        1,
        ModelConfig::new(3, 8, 2).with_head(2),
        7,
    );
    wait_versions(&mut c, "m", &[1]).await;
    server.wait_serving().await;
    server.stop().await;
}
