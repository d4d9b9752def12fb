//! Prometheus metrics: the recorder, the HELP text of every family, the
//! build info, and the state gauges refreshed once a second. Served on the
//! metrics port by `http.rs`, with the `process_*` families of `process.rs`.
//!
//! Recorded where things happen (`metrics` macros: cheap, lock-free): every
//! RPC (`rpc.rs`: ours by method and code, plus the grpc-ecosystem
//! `grpc_server_*` families), step latency and formed batch sizes per model
//! version (handles built once per worker), Predict per model version,
//! per-message stream errors, training outcomes, model load failures.
//! Latencies and batch sizes are real Prometheus histograms with fixed
//! buckets, not summaries. `model`/`version` labels come only from loaded
//! models, so a client cannot grow the label sets.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

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
        describe();
        build_info();
        zero_counters();
        handle
    })
}

/// HELP text for every family (units in the text; the names carry them as
/// suffixes already), so `promtool check metrics` is clean.
fn describe() {
    // Our RPC families (method = `package.Service/Method`).
    describe_counter!(
        "gru_rpc_requests_total",
        "RPCs answered, by method and gRPC status code (counted at the response head)."
    );
    describe_counter!(
        "gru_rpc_failures_total",
        "RPCs answered with a status other than OK, by method and gRPC status code."
    );
    describe_histogram!(
        "gru_rpc_duration_seconds",
        "Time to the response head in seconds: the whole call for unary RPCs, the opening for streams."
    );
    // The grpc-ecosystem server families (go-grpc-middleware's names and labels).
    describe_counter!(
        "grpc_server_started_total",
        "RPCs started on the server, by grpc_type, grpc_service and grpc_method."
    );
    describe_counter!(
        "grpc_server_handled_total",
        "RPCs completed on the server, by grpc_type, grpc_service, grpc_method and grpc_code."
    );
    describe_counter!(
        "grpc_server_msg_received_total",
        "gRPC messages received from clients (stream messages counted one by one)."
    );
    describe_counter!(
        "grpc_server_msg_sent_total",
        "gRPC messages sent to clients (stream messages counted one by one)."
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        "Time from an RPC's start to its final status in seconds (a stream's whole life)."
    );
    // Inference, by model and version.
    describe_histogram!(
        "gru_step_latency_seconds",
        "Time from a step message's validation to its computed reply in seconds, by model and version."
    );
    describe_counter!(
        "gru_steps_total",
        "Time steps (rows) computed for sessions, by model and version."
    );
    describe_histogram!(
        "gru_batch_sessions",
        "Sessions in one batched forward of a compute worker (sessions), by model and version."
    );
    describe_gauge!(
        "gru_steps_queued",
        "Step messages waiting for a compute worker (messages), by model and version."
    );
    describe_counter!(
        "gru_predict_requests_total",
        "Predict calls computed, by model and version."
    );
    describe_counter!(
        "gru_predict_sequences_total",
        "Sequences computed by Predict, by model and version."
    );
    describe_histogram!(
        "gru_predict_duration_seconds",
        "Compute time of one Predict call in seconds, by model and version."
    );
    describe_counter!(
        "gru_stream_message_errors_total",
        "StepStream messages answered with an in-stream error, by gRPC status code."
    );
    describe_counter!(
        "gru_worker_panics_total",
        "Batches failed by a panic in a compute worker (the worker goes on)."
    );
    // Sessions.
    describe_counter!(
        "gru_sessions_opened_total",
        "Sessions created by OpenSession (not resumed by key), by model and version."
    );
    describe_gauge!(
        "gru_sessions_live",
        "Live sessions of all models (sessions); compare with gru_sessions_max."
    );
    describe_gauge!(
        "gru_model_sessions_live",
        "Live sessions on one model version (sessions), by model and version."
    );
    describe_gauge!(
        "gru_sessions_max",
        "The session cap (--max-sessions): past it OpenSession is RESOURCE_EXHAUSTED."
    );
    // The session store (--session-store).
    describe_counter!(
        "gru_session_checkpoints_total",
        "Session store checkpoints, by result (ok, error)."
    );
    describe_counter!(
        "gru_session_checkpoint_sessions_total",
        "Sessions written by checkpoints (changed since the one before, or all at shutdown)."
    );
    describe_histogram!(
        "gru_session_checkpoint_duration_seconds",
        "How long one checkpoint took: copying the changed sessions and writing them."
    );
    describe_gauge!(
        "gru_session_checkpoint_lag_seconds",
        "Seconds since the last successful checkpoint: what a crash now could lose."
    );
    describe_counter!(
        "gru_session_takeovers_total",
        "Sessions moved between replicas: taken (fetched from the store here), lost (another replica took ours)."
    );
    describe_histogram!(
        "gru_session_takeover_seconds",
        "How long taking a session over from the store took (the first call's extra wait)."
    );
    describe_counter!(
        "gru_session_handoffs_total",
        "Takeovers from a live replica: handed (it wrote its latest and let go), timeout (taken as last stored)."
    );
    describe_counter!(
        "gru_session_store_errors_total",
        "Failed session store calls, by operation; sessions keep serving from memory."
    );
    describe_gauge!(
        "gru_session_store_up",
        "1 while the shared session store (Redis) answers, 0 while it does not."
    );
    describe_counter!(
        "gru_sessions_restored_total",
        "Sessions read back from the session store at start."
    );
    describe_counter!(
        "gru_session_restore_skipped_total",
        "Stored sessions not restored, by reason (expired, invalid, corrupt_file)."
    );
    // Models and training.
    describe_gauge!(
        "gru_model_versions_loaded",
        "Model versions loaded and served (versions)."
    );
    describe_counter!(
        "gru_model_load_failures_total",
        "Model version folders that failed to load (at start or on a rescan)."
    );
    describe_gauge!(
        "gru_training_jobs",
        "Training jobs by state (queued, running)."
    );
    describe_counter!(
        "gru_training_jobs_finished_total",
        "Training jobs ended, by outcome (succeeded, failed, cancelled, interrupted)."
    );
    describe_counter!(
        "gru_training_batches_total",
        "Training mini-batches computed."
    );
    describe_gauge!(
        "gru_training_progress_ratio",
        "Fraction (0 to 1) of the running training jobs' batches done; 0 when idle."
    );
    describe_gauge!(
        "gru_build_info",
        "Always 1; the labels say which build runs: version, git_sha, features."
    );
}

/// The unlabelled counters of rare events exist from the start at 0:
/// `increase()` in an alert sees the first event only if the series existed
/// before it.
fn zero_counters() {
    for name in [
        "gru_model_load_failures_total",
        "gru_worker_panics_total",
        "gru_training_batches_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for outcome in ["succeeded", "failed", "cancelled", "interrupted"] {
        metrics::counter!("gru_training_jobs_finished_total", "outcome" => outcome).absolute(0);
    }
}

/// `gru_build_info{version,git_sha,features} 1`, as Prometheus' own
/// `prometheus_build_info` does it.
fn build_info() {
    let features: Vec<&str> = [
        ("grpc", cfg!(feature = "grpc")),
        ("onnx", cfg!(feature = "onnx")),
        ("otlp", cfg!(feature = "otlp")),
        ("cuda", cfg!(feature = "cuda")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| *name)
    .collect();
    metrics::gauge!(
        "gru_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "git_sha" => env!("GRU_GIT_SHA"),
        "features" => features.join(",")
    )
    .set(1.0);
}

/// Refreshes the state gauges once a second until `shutdown`.
pub async fn refresh_gauges(engine: Engine, max_sessions: usize, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    metrics::gauge!("gru_sessions_max").set(max_sessions as f64);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics::gauge!("gru_sessions_live").set(engine.live_sessions() as f64);
        let served = engine.served_versions();
        metrics::gauge!("gru_model_versions_loaded").set(served.len() as f64);
        for m in &served {
            use std::sync::atomic::Ordering::Relaxed;
            let labels = [
                ("model", m.name.clone()),
                ("version", m.version.to_string()),
            ];
            let stats = &m.worker.stats;
            metrics::gauge!("gru_steps_queued", &labels).set(stats.queued.load(Relaxed) as f64);
            metrics::gauge!("gru_model_sessions_live", &labels)
                .set(stats.sessions.load(Relaxed) as f64);
        }
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
