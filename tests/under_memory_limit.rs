#![cfg(feature = "grpc")]
//! The real binary under an address-space limit (`prlimit --as`), fired at
//! with the requests that used to take a server down: a 137 kB ragged
//! Predict that asked for 10.5 GB, long and short step messages mixed in
//! one batch, an oversized id, a step index at the top. The process must
//! answer each (a value or a clear status), stay SERVING, keep stepping a
//! live session, and exit 0 on SIGTERM.

use std::process::{Command, Stdio};

use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod common;
use common::process::{free_port, Spawned};

/// The old ragged Predict wanted 10.5 GB; a healthy server needs far less.
const ADDRESS_SPACE: u64 = 3 << 30;

fn rows(n: usize, seed: usize) -> pb::Matrix {
    pb::Matrix {
        rows: n as u32,
        cols: 1,
        values: (0..n)
            .map(|k| (((k + seed) % 17) as f32 / 17.0) - 0.5)
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_requests_under_a_memory_limit_leave_the_server_serving() {
    let port = free_port();
    let mut server = Spawned(
        Command::new("prlimit")
            .arg(format!("--as={ADDRESS_SPACE}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_gru-serve"))
            .env_clear()
            // glibc reserves 64 MiB of address space per malloc arena.
            .env("MALLOC_ARENA_MAX", "2")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--model-dir",
                concat!(env!("CARGO_MANIFEST_DIR"), "/models"),
            ])
            .args(["--metrics-listen", "off", "--log", "warn"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start gru-serve under prlimit"),
    );
    let addr = format!("http://127.0.0.1:{port}");
    let channel = server.wait_serving(&addr).await;
    let mut c = GruServiceClient::new(channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);

    let live = c
        .open_session(pb::OpenSessionRequest {
            model: "sine".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;

    // 1. The Predict: 20,000 steps + 4,095 one-step sequences.
    let mut seqs = vec![pb::PredictSequence {
        inputs: Some(rows(20_000, 0)),
        initial_state: None,
    }];
    seqs.extend((0..4095).map(|n| pb::PredictSequence {
        inputs: Some(rows(1, n)),
        initial_state: None,
    }));
    let r = c
        .predict(pb::PredictRequest {
            model: "sine".into(),
            sequences: seqs,
            ..Default::default()
        })
        .await
        .expect("the ragged predict is answered");
    assert_eq!(r.into_inner().outputs.len(), 4096);

    // 2. A wide Predict: 4,096 sequences × 256 steps.
    let big: Vec<_> = (0..4096)
        .map(|n| pb::PredictSequence {
            inputs: Some(rows(256, n)),
            initial_state: None,
        })
        .collect();
    match c
        .predict(pb::PredictRequest {
            model: "sine".into(),
            sequences: big,
            ..Default::default()
        })
        .await
    {
        Ok(r) => assert_eq!(r.into_inner().outputs.len(), 4096),
        Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message()),
    }

    // 3. Many sessions with one-row steps and one 4,096-row step at once:
    //    the batch never pads every short row to 4,096.
    let mut tasks = Vec::new();
    for n in 0..64usize {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let id = c
                .open_session(pb::OpenSessionRequest {
                    model: "sine".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .session_id;
            let k = if n == 0 { 4096 } else { 1 };
            for m in 0..5 {
                c.step(pb::StepRequest {
                    session_id: id.clone(),
                    inputs: Some(rows(k, m)),
                    ..Default::default()
                })
                .await
                .expect("step");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // 4. An oversized id and a step index at the top.
    let s = c
        .step(pb::StepRequest {
            session_id: "a".repeat(17_000),
            inputs: Some(rows(1, 0)),
            ..Default::default()
        })
        .await
        .expect_err("a 17,000-byte id");
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    let top = c
        .open_session(pb::OpenSessionRequest {
            resume: Some(pb::SessionState {
                model: "sine".into(),
                version: 1,
                step_index: i64::MAX as u64 - 1,
                hidden: Some(pb::HiddenState {
                    num_layers: 1,
                    hidden_size: 32,
                    values: vec![0.0; 32],
                }),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let s = c
        .step(pb::StepRequest {
            session_id: top,
            inputs: Some(rows(2, 0)),
            ..Default::default()
        })
        .await
        .expect_err("a step past the top index");
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());

    // Still alive, SERVING, and the first session still steps.
    assert!(server.0.try_wait().unwrap().is_none(), "gru-serve died");
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(health, ServingStatus::Serving as i32);
    c.step(pb::StepRequest {
        session_id: live,
        inputs: Some(rows(3, 1)),
        ..Default::default()
    })
    .await
    .expect("the live session still steps");

    server.terminate().await;
}
