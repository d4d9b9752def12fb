#![cfg(feature = "grpc")]
//! HTTP health on the metrics port: `/livez`, `/readyz` and
//! `/readyz/models/{name}`, for checkers that speak only HTTP (Kubernetes
//! httpGet probes, nginx, HAProxy).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod common;
use common::process::{free_port, http_get, Spawned};
use common::server::*;

fn metrics_addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// A missing model directory: alive (200), not ready (503) with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_with_a_reason_when_the_model_dir_is_missing() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let mut config = config_for(&dir.path().join("no-such-dir"));
    config.metrics_listen = Some(metrics_addr(port));
    let server = TestServer::start(config).await;
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let (code, body) = http_get(metrics_addr(port), "/readyz").await.unwrap();
        assert_eq!(code, 503, "{body}");
        if body.contains("no-such-dir") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no reason naming the dir: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains(r#""status":"not_ready""#), "{body}");
    let (code, _) = http_get(metrics_addr(port), "/livez").await.unwrap();
    assert_eq!(code, 200);
    let (code, _) = http_get(metrics_addr(port), "/readyz/models/m")
        .await
        .unwrap();
    assert_eq!(code, 503);
    server.stop().await;
}

/// Loaded: 200 for the server and for a loaded model, 404 for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_once_models_are_loaded_and_per_model() {
    let repo = small_repo();
    let port = free_port();
    let mut config = config_for(repo.path());
    config.metrics_listen = Some(metrics_addr(port));
    let server = TestServer::start(config).await;
    server.wait_serving().await;
    let (code, body) = http_get(metrics_addr(port), "/readyz").await.unwrap();
    assert_eq!((code, body.trim()), (200, r#"{"status":"ready"}"#));
    let (code, body) = http_get(metrics_addr(port), "/readyz/models/m")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""versions":[1]"#), "{body}");
    let (code, body) = http_get(metrics_addr(port), "/readyz/models/nope")
        .await
        .unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("'nope' is not loaded"), "{body}");
    server.stop().await;
}

/// SIGTERM turns /readyz 503 at once, while the gRPC port still accepts
/// (`--shutdown-delay`), and the process then exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_at_sigterm_before_the_grpc_listener_closes() {
    let repo = small_repo();
    let (port, mport) = (free_port(), free_port());
    let mut server = Spawned(
        Command::new(env!("CARGO_BIN_EXE_gru-serve"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{mport}")])
            .arg("--model-dir")
            .arg(repo.path())
            .args(["--shutdown-delay", "4s", "--log", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn gru-serve"),
    );
    let grpc = format!("http://127.0.0.1:{port}");
    server.wait_serving(&grpc).await;
    let (code, _) = http_get(metrics_addr(mport), "/readyz").await.unwrap();
    assert_eq!(code, 200);

    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let signalled = Instant::now();
    let body = loop {
        let (code, body) = http_get(metrics_addr(mport), "/readyz").await.unwrap();
        if code == 503 {
            break body;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "/readyz still {code} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(body.contains("draining"), "{body}");
    // The listener is still open: a new connection is accepted and answered
    // (NOT_SERVING, as readiness says).
    let ch = tonic::transport::Channel::from_shared(grpc)
        .unwrap()
        .connect()
        .await
        .expect("the gRPC port still accepts after /readyz turned 503");
    let status = HealthClient::new(ch)
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers during the shutdown delay")
        .into_inner()
        .status;
    assert_eq!(status, 2, "NOT_SERVING while draining");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "checked within the delay"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
}
