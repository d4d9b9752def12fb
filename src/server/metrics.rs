//! Prometheus metrics on a port of their own (`--metrics-listen`).
//!
//! Recorded where things happen (`metrics` macros: cheap, lock-free): every
//! RPC with its gRPC status code and latency (a tower layer on the server),
//! step latency, formed batch sizes, per-message stream errors, training
//! outcomes. Gauges of state (sessions, queued steps, jobs, loaded versions,
//! training progress) are refreshed once a second. Latencies and batch sizes
//! are real Prometheus histograms with fixed buckets, not summaries.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tracing::Instrument;

use crate::engine::training::JobState;
use crate::engine::Engine;

const LATENCY_BUCKETS: [f64; 16] = [
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
    1.0, 2.5, 10.0,
];
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The process-wide recorder (installed on first use). A process can hold
/// one global recorder; several servers in one process (tests) share it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("gru_batch_sessions".into()), &BATCH_BUCKETS)
            })
            .expect("static bucket lists are valid");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "another metrics recorder is installed; /metrics shows only what it does not take"
            );
        }
        handle
    })
}

/// Serves `GET /metrics` (text format 0.0.4) on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let handle = handle();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper::service::service_fn(
            move |req: http::Request<hyper::body::Incoming>| async move {
                let response =
                    if req.method() == http::Method::GET && req.uri().path() == "/metrics" {
                        handle.run_upkeep();
                        http::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(handle.render())))
                    } else {
                        http::Response::builder()
                            .status(http::StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                    };
                Ok::<_, Infallible>(response.expect("static response parts are valid"))
            },
        );
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Refreshes the state gauges once a second until `shutdown`.
pub async fn refresh_gauges(engine: Engine, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics::gauge!("gru_sessions_live").set(engine.live_sessions() as f64);
        let served = engine.served_versions();
        metrics::gauge!("gru_model_versions_loaded").set(served.len() as f64);
        let queued: u64 = served
            .iter()
            .map(|m| {
                m.worker
                    .stats
                    .queued
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        metrics::gauge!("gru_steps_queued").set(queued as f64);
        let jobs = engine.training().list();
        for (state, label) in [(JobState::Queued, "queued"), (JobState::Running, "running")] {
            let n = jobs.iter().filter(|j| j.state == state).count();
            metrics::gauge!("gru_training_jobs", "state" => label).set(n as f64);
        }
        // Progress of the running jobs, as the fraction of batches done (0 when idle).
        let (done, total) = jobs
            .iter()
            .filter(|j| j.state == JobState::Running)
            .filter_map(|j| j.progress.as_ref())
            .fold((0usize, 0usize), |(d, t), p| {
                (
                    d + (p.epoch - 1) * p.batches_per_epoch + p.batch,
                    t + p.epochs * p.batches_per_epoch,
                )
            });
        metrics::gauge!("gru_training_progress_ratio").set(if total > 0 {
            done as f64 / total as f64
        } else {
            0.0
        });
    }
}

/// A tower layer counting every RPC by method and gRPC status code, with its
/// latency (to the response head: the whole call for unary RPCs, the
/// stream's opening for streaming ones).
#[derive(Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

/// Only this server's own methods become label values: unknown paths would
/// let a client grow the label set without bound.
fn method_label(path: &str) -> String {
    let known = ["/gru.v1.", "/grpc.health.v1.", "/grpc.reflection."];
    if known.iter().any(|k| path.starts_with(k)) && path.len() < 128 {
        path.trim_start_matches('/').to_string()
    } else {
        "other".to_string()
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let span = super::telemetry::rpc_span(&method, req.headers());
        let started = Instant::now();
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(async move {
            let res = fut.instrument(span.clone()).await;
            // Errors before any handler ran, and Trailers-Only error replies,
            // carry grpc-status in the head; otherwise the call succeeded so far.
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Internal,
            };
            span.record("rpc.grpc.status_code", code as i32);
            let code = format!("{code:?}");
            metrics::counter!("gru_rpc_requests_total", "method" => method.clone(), "code" => code.clone())
                .increment(1);
            if code != "Ok" {
                metrics::counter!("gru_rpc_failures_total", "method" => method.clone(), "code" => code)
                    .increment(1);
            }
            metrics::histogram!("gru_rpc_duration_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            res
        })
    }
}
