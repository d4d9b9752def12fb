#![cfg(feature = "grpc")]
//! Prometheus `/metrics` against the real server. The recorder is
//! process-wide, so this test has a binary of its own: no other test's
//! traffic moves its counters, and they are asserted exactly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tonic::Code;

mod common;
use common::server::*;

/// The small model of `small_repo`: I = 3 inputs.
const I: usize = 3;

/// GETs `path` from the metrics port: (status line, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut buf))
        .await
        .expect("metrics reply in time")
        .unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").expect("an HTTP reply");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Prometheus text format → {"name{k=v,…}" (labels sorted): value}.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut ls: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                ls.sort();
                format!("{name}{{{}}}", ls.join(","))
            }
            None => series.to_string(),
        };
        out.insert(key, value.parse::<f64>().expect("a numeric sample"));
    }
    out
}

/// /metrics is served on its own port, parses as Prometheus text, and its
/// counters and histograms move by exactly this test's traffic (3 Steps of 2
/// rows, 1 Step on a missing session); the state gauges, refreshed every
/// second, reach this server's state (polled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let repo = small_repo();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = config_for(repo.path());
    config.metrics_listen = Some(port);
    let server = TestServer::start(config).await;
    server.wait_serving().await;
    let mut c = server.client();
    let id = open_latest(&mut c, "m").await.session_id;
    let (status, before) = http_get(port, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let before = parse_metrics(&before);
    for n in 0..3 {
        c.step(step_req(&id, rand_vec(2 * I, n), n)).await.unwrap();
    }
    let missing = expect_err(
        "step on a missing session",
        c.step(step_req("nope", rand_vec(I, 9), 0)).await,
    );
    assert_eq!(missing.code(), Code::NotFound);

    // The gauges are refreshed once a second: poll until they show this
    // server's one session and one loaded version.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (text, after) = loop {
        let (_, text) = http_get(port, "/metrics").await;
        let after = parse_metrics(&text);
        let gauge = |k: &str| after.get(k).copied();
        if gauge("gru_sessions_live") == Some(1.0)
            && gauge("gru_model_versions_loaded") == Some(1.0)
        {
            break (text, after);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauges never showed 1 session and 1 version: sessions {:?}, versions {:?}",
            gauge("gru_sessions_live"),
            gauge("gru_model_versions_loaded")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let ok_steps = r#"gru_rpc_requests_total{code="Ok",method="gru.v1.GruService/Step"}"#;
    assert_eq!(delta(ok_steps), 3.0, "{ok_steps}");
    let not_found = r#"gru_rpc_failures_total{code="NotFound",method="gru.v1.GruService/Step"}"#;
    assert_eq!(delta(not_found), 1.0, "{not_found}");
    let not_found_requests =
        r#"gru_rpc_requests_total{code="NotFound",method="gru.v1.GruService/Step"}"#;
    assert_eq!(delta(not_found_requests), 1.0, "{not_found_requests}");
    assert_eq!(delta("gru_steps_total"), 6.0, "rows computed");
    // Real histograms: cumulative buckets with `le`, a count and a sum.
    assert_eq!(
        delta(r#"gru_step_latency_seconds_bucket{le="+Inf"}"#),
        3.0,
        "one latency per computed step message"
    );
    assert_eq!(delta("gru_step_latency_seconds_count"), 3.0);
    assert!(
        after.contains_key(r#"gru_step_latency_seconds_bucket{le="0.001"}"#),
        "no fixed buckets"
    );
    assert!(
        !text.contains("gru_step_latency_seconds{quantile"),
        "rendered as a summary"
    );
    // Three lone Steps: three batches of one session each.
    assert_eq!(delta(r#"gru_batch_sessions_bucket{le="+Inf"}"#), 3.0);
    assert_eq!(delta(r#"gru_batch_sessions_bucket{le="1"}"#), 3.0);
    assert_eq!(delta("gru_batch_sessions_sum"), 3.0);
    assert_eq!(
        delta(r#"gru_rpc_duration_seconds_count{method="gru.v1.GruService/Step"}"#),
        4.0
    );
    assert!(after.contains_key(r#"gru_training_jobs{state="running"}"#));
    let (status, _) = http_get(port, "/other").await;
    assert!(status.contains("404"), "{status}");
    server.stop().await;
}
