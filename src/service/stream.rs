//! The reading half of a bidirectional stream, shared by gru.v1's StepStream
//! and Triton's ModelStreamInfer: the next message, or why the stream ends.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

pub enum Next<T> {
    Message(T),
    /// The client closed its side.
    Closed,
    /// The stream ends with this status (sent to the client in order).
    End(Status),
}

/// Waits for the next message of `inbound`: ends the stream at shutdown or
/// after `idle` without one. `what` names a message and what outlives the
/// stream, for the idle timeout's text.
pub async fn next_message<T>(
    inbound: &mut Streaming<T>,
    cancel: &CancellationToken,
    idle: Duration,
    what: (&str, &str),
) -> Next<T> {
    tokio::select! {
        _ = cancel.cancelled() => Next::End(Status::unavailable("the server is shutting down")),
        m = tokio::time::timeout(idle, inbound.message()) => match m {
            Err(_) => Next::End(Status::deadline_exceeded(format!(
                "no {} for {} s (the stream idle timeout); {} live on, reopen the stream",
                what.0,
                idle.as_secs(),
                what.1
            ))),
            Ok(Ok(Some(m))) => Next::Message(m),
            Ok(Ok(None)) => Next::Closed,
            // An oversize or corrupt message must not look like a clean end.
            Ok(Err(status)) => Next::End(status),
        },
    }
}
