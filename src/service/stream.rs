//! The two halves of a bidirectional stream, shared by gru.v1's StepStream
//! and Triton's ModelStreamInfer: the next message, or why the stream ends;
//! and the replies, in request order.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

/// A streaming RPC's replies, polled by the transport's task for the RPC.
pub type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A stream's replies: each item the reader queued, in order, turned into
/// its reply by `reply` as the transport asks for the next. No writer task:
/// hyper's task for the response is the only one waiting, so a batch that
/// answers many of the stream's messages wakes it once. `permit` (the
/// stream cap) is held as long as the replies are. An `Err` ends the RPC
/// (tonic sends it as the trailers).
pub fn replies<I, T, F, Fut>(
    order: mpsc::Receiver<I>,
    permit: OwnedSemaphorePermit,
    mut reply: F,
) -> ReplyStream<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: FnMut(I) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
{
    Box::pin(ReceiverStream::new(order).then(move |item| {
        let _held = &permit;
        reply(item)
    }))
}

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
