#![cfg(feature = "grpc")]
//! The client failover helper (examples/client/failover.rs) against a real
//! server that dies mid-sequence: SIGKILL, a new process on the same port a
//! moment later, while the client keeps stepping. The helper re-opens its
//! key, replays from the index the server reports (0 when the session did
//! not survive; the last checkpoint when it did) and ends with exactly the
//! outputs of an uninterrupted run of the same inputs on the same server.

mod common;
#[allow(dead_code)] // the example uses the rest
#[path = "../examples/client/failover.rs"]
mod failover;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{free_port, Spawned};
use common::server::{assert_close, rand_vec, small_repo};
use common::sessions::I;
use failover::FailoverSession;
use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;

const ROWS: usize = 40;
const KILL_AT: usize = 17;

fn serve(port: u16, dir: &std::path::Path) -> Spawned {
    Spawned(
        Command::new(env!("CARGO_BIN_EXE_gru-serve"))
            .env("GRU_LOG", "warn")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", "off"])
            .arg("--model-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn open_req(key: &str) -> pb::OpenSessionRequest {
    pb::OpenSessionRequest {
        model: "m".into(),
        session_key: key.into(),
        ..Default::default()
    }
}

async fn run(s: &mut FailoverSession, inputs: &[f32], rows: std::ops::Range<usize>) -> Vec<f32> {
    let mut out = Vec::new();
    for r in rows {
        out.extend(s.step(&inputs[r * I..(r + 1) * I]).await.expect("step"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_replays_through_a_server_crash_and_ends_as_if_uninterrupted() {
    let dir = small_repo();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let mut server = serve(port, dir.path());
    let channel = server.wait_serving(&addr).await;
    // A lazy channel reconnects by itself once the new process listens.
    let client = GruServiceClient::new(
        tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .connect_lazy(),
    );
    let inputs = rand_vec(ROWS * I, 5);

    // The reference: the same inputs, uninterrupted, one row per message.
    let mut reference = FailoverSession::open(GruServiceClient::new(channel), open_req("ref"))
        .await
        .unwrap();
    let want = run(&mut reference, &inputs, 0..ROWS).await;
    assert_eq!(reference.failovers, 0);

    let mut s = FailoverSession::open(client, open_req("user-1"))
        .await
        .unwrap();
    let mut got = run(&mut s, &inputs, 0..KILL_AT).await;
    assert_eq!(s.step_index(), KILL_AT as u64);

    // Crash; a new server comes up 300 ms later on the same port, while the
    // client is already stepping (its calls are UNAVAILABLE meanwhile).
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let dir_path = dir.path().to_path_buf();
    let back = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut server = serve(port, &dir_path);
        server
            .wait_serving(&format!("http://127.0.0.1:{port}"))
            .await;
        server
    });
    got.extend(run(&mut s, &inputs, KILL_AT..ROWS).await);
    let mut server = back.await.unwrap();

    assert!(s.failovers >= 1, "the helper never failed over");
    assert_eq!(s.step_index(), ROWS as u64);
    assert_eq!(got.len(), want.len());
    assert_close("outputs across the crash", &got, &want);
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_window_refuses_to_replay_what_it_dropped() {
    let dir = small_repo();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let mut server = serve(port, dir.path());
    server.wait_serving(&addr).await;
    let client = GruServiceClient::new(
        tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .connect_lazy(),
    );
    let inputs = rand_vec(10 * I, 6);
    let mut s = FailoverSession::open(client, open_req("short"))
        .await
        .unwrap()
        .keep_at_most(4);
    run(&mut s, &inputs, 0..8).await;

    // A new server on a fresh folder (no session store survives): the key
    // opens a new session at 0, but rows 0..4 were dropped. No silent gap.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let fresh = small_repo();
    let mut server = serve(port, fresh.path());
    server.wait_serving(&addr).await;
    let e = s.step(&inputs[8 * I..9 * I]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    assert!(e.message().contains("keep_at_most"), "{e:?}");
    server.terminate().await;
}
