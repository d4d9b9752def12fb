//! What the service tells the observers about a call as it handles it:
//! the model version and session it used (for the access log, written by the
//! RPC layer in `server/rpc.rs`), Predict and session metrics, and gRPC's
//! canonical code names. Here, below the server, so that the service never
//! imports from the layer above it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a handler learned about its call (model, session), for the access
/// log. Filled only while `--access-log` is on (the layer sets the scope).
#[derive(Default)]
pub struct Note {
    pub model: Option<String>,
    pub version: Option<u64>,
    pub session: Option<String>,
}

tokio::task_local! {
    /// Set by the RPC layer (`server/rpc.rs`) around each call when the access log is on.
    pub static NOTE: Arc<Mutex<Note>>;
}

/// Tells the access log which model version this call used (a no-op
/// without `--access-log`, and outside an RPC's own task).
pub fn note_model(model: &str, version: u64) {
    let _ = NOTE.try_with(|n| {
        let mut n = n.lock().unwrap_or_else(|p| p.into_inner());
        n.model = Some(model.to_string());
        n.version = Some(version);
    });
}

/// Tells the access log which session this call used.
pub fn note_session(session_id: &str) {
    let _ = NOTE.try_with(|n| {
        n.lock().unwrap_or_else(|p| p.into_inner()).session = Some(session_id.to_string());
    });
}

/// gRPC's canonical name of a status code (`OK`, `NOT_FOUND`, …), as the
/// `code`/`grpc_code` label values and in logs.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Predict's metrics for the model version that answered (not the step path:
/// one call, whatever its size, so the labels are built here).
pub fn record_predict(model: &str, version: u64, sequences: usize, elapsed: Duration) {
    let labels = [
        ("model", model.to_string()),
        ("version", version.to_string()),
    ];
    metrics::counter!("gru_predict_requests_total", &labels).increment(1);
    metrics::counter!("gru_predict_sequences_total", &labels).increment(sequences as u64);
    metrics::histogram!("gru_predict_duration_seconds", &labels).record(elapsed.as_secs_f64());
}

/// A session created for a loaded model version.
pub fn record_session_opened(model: &str, version: u64) {
    metrics::counter!(
        "gru_sessions_opened_total",
        "model" => model.to_string(),
        "version" => version.to_string()
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_grpc_canonical_names() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        for n in 0..17 {
            let name = code_name(tonic::Code::from_i32(n));
            assert!(name.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        }
    }
}
