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
    // A Triton sequence on the same model: START with 2 rows, 1 row, END
    // with 1 row. Its rows count once in the same families as gru.v1's.
    let mut v2 = gru_serve::service::triton::pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(
        server.channel.clone(),
    );
    for (n, (start, end, k)) in [(true, false, 2), (false, false, 1), (false, true, 1)]
        .into_iter()
        .enumerate()
    {
        let r = common::triton::seq_request(Some((7, start, end)), &rand_vec(k * I, 20 + n as u64));
        v2.model_infer(r).await.unwrap();
    }
    c.predict(gru_serve::service::pb::PredictRequest {
        model: "m".into(),
        sequences: vec![gru_serve::service::pb::PredictSequence {
            inputs: Some(matrix(2, I, rand_vec(2 * I, 5))),
            initial_state: None,
        }],
        ..Default::default()
    })
    .await
    .unwrap();

    // The gauges are refreshed once a second: poll until they show this
    // server's one session and one loaded version.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (text, after) = loop {
        let (_, text) = http_get(port, "/metrics").await;
        let after = parse_metrics(&text);
        let gauge = |k: &str| after.get(k).copied();
        // Per model too: the session counts itself in on its model version.
        let per_model = r#"gru_model_sessions_live{model="m",version="1"}"#;
        if gauge("gru_sessions_live") == Some(1.0)
            && gauge(per_model) == Some(1.0)
            && gauge("gru_model_versions_loaded") == Some(1.0)
        {
            break (text, after);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauges never showed 1 session and 1 version: sessions {:?} ({:?} on m/1), versions {:?}",
            gauge("gru_sessions_live"),
            gauge(per_model),
            gauge("gru_model_versions_loaded")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let ok_steps = r#"gru_rpc_requests_total{code="OK",method="gru.v1.GruService/Step"}"#;
    assert_eq!(delta(ok_steps), 3.0, "{ok_steps}");
    let not_found = r#"gru_rpc_failures_total{code="NOT_FOUND",method="gru.v1.GruService/Step"}"#;
    assert_eq!(delta(not_found), 1.0, "{not_found}");
    let not_found_requests =
        r#"gru_rpc_requests_total{code="NOT_FOUND",method="gru.v1.GruService/Step"}"#;
    assert_eq!(delta(not_found_requests), 1.0, "{not_found_requests}");
    // The inference families carry the loaded model's name and version.
    let mv = r#"model="m",version="1""#;
    assert_eq!(
        delta(&format!("gru_steps_total{{{mv}}}")),
        6.0 + 4.0,
        "rows computed: gru.v1's 6 and the Triton sequence's 4, each once"
    );
    // Real histograms: cumulative buckets with `le`, a count and a sum.
    assert_eq!(
        delta(&format!(
            r#"gru_step_latency_seconds_bucket{{le="+Inf",{mv}}}"#
        )),
        3.0 + 3.0,
        "one latency per computed step message, either protocol"
    );
    assert_eq!(
        delta(&format!("gru_step_latency_seconds_count{{{mv}}}")),
        6.0
    );
    assert!(
        after.contains_key(&format!(
            r#"gru_step_latency_seconds_bucket{{le="0.001",{mv}}}"#
        )),
        "no fixed buckets"
    );
    // The grpc-ecosystem server families move with the same traffic.
    let step = r#"grpc_method="Step",grpc_service="gru.v1.GruService",grpc_type="unary""#;
    assert_eq!(delta(&format!("grpc_server_started_total{{{step}}}")), 4.0);
    assert_eq!(
        delta(&format!(
            r#"grpc_server_handled_total{{grpc_code="OK",{step}}}"#
        )),
        3.0
    );
    assert_eq!(
        delta(&format!(
            r#"grpc_server_handled_total{{grpc_code="NOT_FOUND",{step}}}"#
        )),
        1.0
    );
    assert_eq!(
        delta(&format!("grpc_server_msg_received_total{{{step}}}")),
        4.0
    );
    assert_eq!(delta(&format!("grpc_server_msg_sent_total{{{step}}}")), 3.0);
    assert_eq!(
        delta(&format!("grpc_server_handling_seconds_count{{{step}}}")),
        4.0
    );
    assert!(after.contains_key(r#"gru_sessions_opened_total{model="m",version="1"}"#));
    assert_eq!(
        delta(r#"gru_predict_sequences_total{model="m",version="1"}"#),
        1.0
    );
    assert!(after.contains_key("gru_sessions_max"));
    assert!(after.contains_key("process_resident_memory_bytes"));
    assert!(after
        .keys()
        .any(|k| k.starts_with("gru_build_info{") && k.contains(r#"version="0.1.0""#)));
    promtool_check(&text);
    assert!(
        !text.contains("gru_step_latency_seconds{quantile"),
        "rendered as a summary"
    );
    // Three lone Steps and the three Triton requests, one after another:
    // six batches of one session each.
    assert_eq!(
        delta(&format!(r#"gru_batch_sessions_bucket{{le="+Inf",{mv}}}"#)),
        6.0
    );
    assert_eq!(
        delta(&format!(r#"gru_batch_sessions_bucket{{le="1",{mv}}}"#)),
        6.0
    );
    assert_eq!(delta(&format!("gru_batch_sessions_sum{{{mv}}}")), 6.0);
    assert_eq!(
        delta(r#"gru_rpc_duration_seconds_count{method="gru.v1.GruService/Step"}"#),
        4.0
    );
    assert!(after.contains_key(r#"gru_training_jobs{state="running"}"#));
    // The deploy/ dashboard and alert rules only query families that exist.
    for file in [
        "deploy/grafana/gru-serve.json",
        "deploy/prometheus/alerts.yaml",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let src = std::fs::read_to_string(&path).unwrap();
        for name in metric_names(&src) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{file} queries {name}, which /metrics does not have"
            );
        }
    }
    let (status, _) = http_get(port, "/other").await;
    assert!(status.contains("404"), "{status}");
    server.stop().await;
}

/// `promtool check metrics` on a scrape: clean (HELP on every family, names
/// and types as Prometheus wants). Skipped, saying so, without promtool;
/// .ci/run installs it.
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        println!("SKIPPED: promtool check metrics (promtool is not installed; apt-get install prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric names (`gru_*`, `grpc_server_*`, `process_*`) in a query file.
fn metric_names(src: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for prefix in ["gru_", "grpc_server_", "process_"] {
        for (i, _) in src.match_indices(prefix) {
            let before = src[..i].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                continue;
            }
            let name: String = src[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // A prose mention of the prefix itself (`grpc_server_*`).
            if !name.ends_with('_') {
                out.insert(name);
            }
        }
    }
    out
}
