#![cfg(feature = "grpc")]
//! The log lines of the real binary (`--log-format json --access-log`):
//! one trace id per RPC on every line inside it (the caller's `traceparent`,
//! else a new one), the caller's `x-request-id`, one access line per RPC,
//! clean values, and no HTTP/2 frame chatter at `--log debug`.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};

use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;
use serde_json::Value;
use tonic::{Code, Request};

mod common;
use common::process::{free_port, Spawned};
use common::server::{rand_vec, small_repo, step_req};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn with_headers<T>(msg: T, headers: &[(&'static str, &str)]) -> Request<T> {
    let mut r = Request::new(msg);
    for (k, v) in headers {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rpc_one_trace_id_and_one_access_line() {
    let repo = small_repo();
    let port = free_port();
    let mut server = Spawned(
        Command::new(env!("CARGO_BIN_EXE_gru-serve"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--model-dir")
            .arg(repo.path())
            .args(["--metrics-listen", "off", "--log", "debug"])
            .args(["--log-format", "json", "--access-log"])
            .env_remove("GRU_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gru-serve"),
    );
    let ch = server
        .wait_serving(&format!("http://127.0.0.1:{port}"))
        .await;
    let mut c = GruServiceClient::new(ch);
    let open = c
        .open_session(pb::OpenSessionRequest {
            model: "m".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = open.session_id;
    let traced = with_headers(
        step_req(&id, rand_vec(3, 1), 1),
        &[
            ("traceparent", &format!("00-{TRACE_ID}-00f067aa0ba902b7-01")),
            ("x-request-id", "req-42"),
        ],
    );
    c.step(traced).await.unwrap();
    c.step(step_req(&id, rand_vec(3, 2), 2)).await.unwrap();
    let missing = c
        .step(step_req("nope", rand_vec(3, 3), 3))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    server.terminate().await;

    let mut out = String::new();
    server
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let field = |l: &Value, k: &str| l.get(k).and_then(Value::as_str).map(str::to_string);

    // Clean values: no Debug wrappers, no empty fields, one span object.
    for (l, raw) in lines.iter().zip(out.lines()) {
        assert!(!raw.contains("Some("), "Debug value: {raw}");
        assert!(!raw.contains(r#"":"""#), "empty field: {raw}");
        assert!(l.get("spans").is_none(), "two span fields: {raw}");
        let target = field(l, "target").unwrap_or_default();
        assert!(
            !["h2", "hyper", "tonic", "tower"]
                .iter()
                .any(|t| target == *t || target.starts_with(&format!("{t}::"))),
            "HTTP/2 internals at --log debug: {raw}"
        );
    }

    // The Step calls' lines, grouped by trace id.
    let step_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l.pointer("/span/rpc.method").and_then(Value::as_str) == Some("Step"))
        .collect();
    let mut by_trace: HashMap<String, Vec<&Value>> = HashMap::new();
    for l in &step_lines {
        let t = field(l, "trace_id").expect("a line inside an RPC without trace_id");
        by_trace.entry(t).or_default().push(l);
    }
    assert_eq!(by_trace.len(), 3, "three Step calls, three trace ids");
    let traced = &by_trace[TRACE_ID];
    assert!(
        traced.len() >= 2,
        "the traced Step's debug and access lines share its trace id: {traced:?}"
    );
    for l in traced {
        assert_eq!(field(l, "request_id").as_deref(), Some("req-42"), "{l}");
    }
    for t in by_trace.keys() {
        assert!(
            t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()),
            "{t}"
        );
    }

    // One access line per RPC, with what is known about it.
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| field(l, "target").as_deref() == Some("gru_serve::access"))
        .collect();
    let of = |method: &str| {
        access
            .iter()
            .filter(|l| field(l, "method").as_deref() == Some(method))
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(of("gru.v1.GruService/OpenSession").len(), 1);
    let steps = of("gru.v1.GruService/Step");
    assert_eq!(steps.len(), 3, "{steps:?}");
    let codes: Vec<String> = steps.iter().filter_map(|l| field(l, "code")).collect();
    assert_eq!(codes, ["OK", "OK", "NOT_FOUND"]);
    for l in &steps[..2] {
        assert_eq!(field(l, "model").as_deref(), Some("m"), "{l}");
        assert_eq!(field(l, "session_id").as_deref(), Some(id.as_str()), "{l}");
        assert!(
            field(l, "peer").is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{l}"
        );
        assert!(
            l.get("duration_ms").and_then(Value::as_f64).is_some(),
            "{l}"
        );
        assert!(l.get("error").is_none(), "{l}");
    }
    assert_eq!(field(steps[2], "level").as_deref(), Some("INFO"));
    assert!(
        field(steps[2], "error").is_some_and(|e| e.contains("nope")),
        "{}",
        steps[2]
    );
}
