//! OTLP trace export end to end: the gru-serve binary, started with
//! `--otlp-endpoint` pointing at a fake OpenTelemetry collector served by this
//! test, exports one span per RPC, continuing the caller's W3C trace.
#![cfg(feature = "otlp")]

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

mod common;
use common::process::{free_port, Spawned};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// Keeps what it is sent: (service.name of the resource, span).
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The server process; killed if the test fails before it stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rpc_is_a_span_in_the_callers_trace() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let port = free_port();
    let mut server = Spawned(
        Command::new(env!("CARGO_BIN_EXE_gru-serve"))
            .env_clear()
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--model-dir",
                concat!(env!("CARGO_MANIFEST_DIR"), "/models"),
            ])
            .args(["--metrics-listen", "off", "--log", "warn"])
            .args(["--otlp-endpoint", &format!("http://{collector_addr}")])
            .args(["--otlp-service-name", "gru-serve-under-test"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start gru-serve"),
    );
    let channel = server
        .wait_serving(&format!("http://127.0.0.1:{port}"))
        .await;
    let mut client = GruServiceClient::new(channel);

    // A call inside the caller's trace, and one failing call with no trace.
    let mut req = Request::new(pb::ListModelsRequest::default());
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap(),
    );
    let models = client.list_models(req).await.expect("ListModels");
    assert!(!models.into_inner().models.is_empty());
    let err = client
        .get_model(pb::GetModelRequest {
            model: "no-such-model".into(),
            ..Default::default()
        })
        .await
        .expect_err("GetModel of an unknown model");
    assert_eq!(err.code(), Code::NotFound);

    // SIGTERM: the server stops serving, then flushes the buffered spans
    // (the batch exporter's timer is 5 s; shutdown must not wait for it).
    server.terminate().await;

    let spans = collector.spans.lock().unwrap().clone();
    let find = |name: &str| {
        spans
            .iter()
            .find(|(_, s)| s.name == name)
            .unwrap_or_else(|| {
                let names: Vec<_> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
                panic!("no span named {name}; the collector got {names:?}")
            })
    };
    let int_attr = |s: &Span, key: &str| match attr(&s.attributes, key) {
        Some(Value::IntValue(v)) => *v,
        other => panic!("span {}: attribute {key} is {other:?}", s.name),
    };

    let (service, list) = find("gru.v1.GruService/ListModels");
    assert_eq!(service, "gru-serve-under-test");
    assert_eq!(hex(&list.trace_id), TRACE_ID, "the caller's trace id");
    assert_eq!(
        hex(&list.parent_span_id),
        PARENT_ID,
        "the caller's span as parent"
    );
    assert_eq!(list.kind, SpanKind::Server as i32);
    assert_eq!(int_attr(list, "rpc.grpc.status_code"), 0);
    assert_eq!(
        string_attr(&list.attributes, "rpc.method").as_deref(),
        Some("ListModels")
    );

    let (_, get) = find("gru.v1.GruService/GetModel");
    assert!(get.parent_span_id.is_empty(), "no traceparent: a root span");
    assert_ne!(hex(&get.trace_id), TRACE_ID);
    assert_eq!(int_attr(get, "rpc.grpc.status_code"), Code::NotFound as i64);
}
