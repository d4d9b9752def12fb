//! The tower layer every RPC passes through: its span (trace id, request id),
//! its metrics (ours and the grpc-ecosystem `grpc_server_*` families), the
//! log line of a failed RPC and, with `--access-log`, one line per RPC.
//!
//! A call is complete when its response body ends: the trailers carry the
//! final status (a stream's too), a Trailers-Only reply carries it in the
//! head, and a body dropped before its end is a call the client cancelled.
//! The per-method metric handles are built once, so a call builds no label
//! set.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use metrics::{Counter, Histogram};
use tonic::codegen::http;
use tonic::Code;
use tracing::Instrument;

use crate::service::observe::{code_name, Note, NOTE};

/// This server's methods and their gRPC types. Only these become label
/// values: any other path is `other`, so a client cannot grow the label set.
const METHODS: [(&str, &str); 30] = [
    ("gru.v1.GruService/ListModels", "unary"),
    ("gru.v1.GruService/GetModel", "unary"),
    ("gru.v1.GruService/Predict", "unary"),
    ("gru.v1.GruService/OpenSession", "unary"),
    ("gru.v1.GruService/Step", "unary"),
    ("gru.v1.GruService/StepStream", "bidi_stream"),
    ("gru.v1.GruService/GetSessionState", "unary"),
    ("gru.v1.GruService/CloseSession", "unary"),
    ("gru.v1.TrainingService/StartTraining", "unary"),
    ("gru.v1.TrainingService/UploadTraining", "client_stream"),
    ("gru.v1.TrainingService/WatchTraining", "server_stream"),
    ("gru.v1.TrainingService/GetTrainingJob", "unary"),
    ("gru.v1.TrainingService/ListTrainingJobs", "unary"),
    ("gru.v1.TrainingService/CancelTraining", "unary"),
    ("inference.GRPCInferenceService/ServerLive", "unary"),
    ("inference.GRPCInferenceService/ServerReady", "unary"),
    ("inference.GRPCInferenceService/ModelReady", "unary"),
    ("inference.GRPCInferenceService/ServerMetadata", "unary"),
    ("inference.GRPCInferenceService/ModelMetadata", "unary"),
    ("inference.GRPCInferenceService/ModelInfer", "unary"),
    (
        "inference.GRPCInferenceService/ModelStreamInfer",
        "bidi_stream",
    ),
    ("inference.GRPCInferenceService/ModelConfig", "unary"),
    ("inference.GRPCInferenceService/ModelStatistics", "unary"),
    ("inference.GRPCInferenceService/RepositoryIndex", "unary"),
    (
        "inference.GRPCInferenceService/RepositoryModelLoad",
        "unary",
    ),
    (
        "inference.GRPCInferenceService/RepositoryModelUnload",
        "unary",
    ),
    ("grpc.health.v1.Health/Check", "unary"),
    ("grpc.health.v1.Health/Watch", "server_stream"),
    (
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "bidi_stream",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "bidi_stream",
    ),
];

/// Every status code, lazily labelled (a code never answered has no series).
type ByCode = [OnceLock<Counter>; 17];

/// The metric handles of one method.
struct MethodMetrics {
    /// `package.Service/Method`, or `other`.
    method: &'static str,
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
    started: Counter,
    msg_received: Counter,
    msg_sent: Counter,
    handling: Histogram,
    handled: ByCode,
    requests: ByCode,
    failures: ByCode,
    duration: Histogram,
}

impl MethodMetrics {
    fn new(method: &'static str, grpc_type: &'static str) -> Self {
        let (grpc_service, grpc_method) = method.split_once('/').unwrap_or((method, method));
        let labels = [
            ("grpc_type", grpc_type),
            ("grpc_service", grpc_service),
            ("grpc_method", grpc_method),
        ];
        MethodMetrics {
            method,
            grpc_type,
            grpc_service,
            grpc_method,
            started: metrics::counter!("grpc_server_started_total", &labels),
            msg_received: metrics::counter!("grpc_server_msg_received_total", &labels),
            msg_sent: metrics::counter!("grpc_server_msg_sent_total", &labels),
            handling: metrics::histogram!("grpc_server_handling_seconds", &labels),
            handled: std::array::from_fn(|_| OnceLock::new()),
            requests: std::array::from_fn(|_| OnceLock::new()),
            failures: std::array::from_fn(|_| OnceLock::new()),
            duration: metrics::histogram!("gru_rpc_duration_seconds", "method" => method),
        }
    }

    fn handled(&self, code: Code) -> &Counter {
        self.handled[code as usize].get_or_init(|| {
            metrics::counter!(
                "grpc_server_handled_total",
                "grpc_type" => self.grpc_type,
                "grpc_service" => self.grpc_service,
                "grpc_method" => self.grpc_method,
                "grpc_code" => code_name(code)
            )
        })
    }

    /// Ours, at the response head (unchanged from before the grpc_server_* families).
    fn answered(&self, code: Code, elapsed: f64) {
        let by = |family: &'static str, cell: &OnceLock<Counter>| {
            cell.get_or_init(
                || metrics::counter!(family, "method" => self.method, "code" => code_name(code)),
            )
            .increment(1)
        };
        by("gru_rpc_requests_total", &self.requests[code as usize]);
        if code != Code::Ok {
            by("gru_rpc_failures_total", &self.failures[code as usize]);
        }
        self.duration.record(elapsed);
    }
}

/// The handles of `path`'s method (`other` for an unknown path).
fn method_metrics(path: &str) -> &'static MethodMetrics {
    static ALL: OnceLock<Vec<MethodMetrics>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        METHODS
            .iter()
            .map(|&(m, t)| MethodMetrics::new(m, t))
            .chain(std::iter::once(MethodMetrics::new("other", "unknown")))
            .collect()
    });
    let path = path.strip_prefix('/').unwrap_or(path);
    all.iter()
        .find(|m| m.method == path)
        .unwrap_or(&all[all.len() - 1])
}

/// The layer; `access_log` writes one line per RPC.
#[derive(Clone, Copy, Default)]
pub struct RpcLayer {
    pub access_log: bool,
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = Rpc<S>;
    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            access_log: self.access_log,
        }
    }
}

#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    access_log: bool,
}

/// The client's address, plain or under TLS.
fn peer<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(|c| c.remote_addr())
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|c| c.get_ref().remote_addr())
        })
}

impl<S, R> tower::Service<http::Request<tonic::body::Body>> for Rpc<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = http::Response<RpcBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let m = method_metrics(req.uri().path());
        m.started.increment(1);
        let span = super::telemetry::rpc_span(m.method, req.headers());
        let peer = peer(&req);
        let started = Instant::now();
        let req = req.map(|body| {
            tonic::body::Body::new(Counted {
                inner: body,
                frames: Frames::default(),
                counter: m.msg_received.clone(),
            })
        });
        let note: Option<Arc<Mutex<Note>>> = self.access_log.then(Arc::default);
        let fut = span.in_scope(|| self.inner.call(req));
        let access_log = self.access_log;
        Box::pin(async move {
            let res = match &note {
                Some(n) => NOTE.scope(n.clone(), fut).instrument(span.clone()).await,
                None => fut.instrument(span.clone()).await,
            };
            let call = Call {
                m,
                started,
                span,
                peer,
                note,
                access_log,
                head: None,
            };
            let res = match res {
                Ok(r) => r,
                Err(e) => {
                    m.answered(Code::Internal, started.elapsed().as_secs_f64());
                    call.finish(Code::Internal, "the service failed before answering");
                    return Err(e);
                }
            };
            // Errors before any handler ran, and Trailers-Only error replies,
            // carry grpc-status in the head; otherwise the call succeeded so far.
            let head = status_of(res.headers());
            m.answered(
                head.as_ref().map_or(Code::Ok, |h| h.0),
                started.elapsed().as_secs_f64(),
            );
            let mut call = call;
            call.head = head;
            Ok(res.map(|inner| RpcBody {
                inner,
                frames: Frames::default(),
                call: Some(Box::new(call)),
            }))
        })
    }
}

/// `grpc-status` and `grpc-message` of a head or trailers.
fn status_of(headers: &http::HeaderMap) -> Option<(Code, String)> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((Code::from_i32(code), message))
}

/// grpc-message is percent-encoded (gRPC over HTTP/2 spec).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One call in flight, finished once.
struct Call {
    m: &'static MethodMetrics,
    started: Instant,
    span: tracing::Span,
    peer: Option<SocketAddr>,
    note: Option<Arc<Mutex<Note>>>,
    access_log: bool,
    /// The status in the response head (a Trailers-Only reply).
    head: Option<(Code, String)>,
}

impl Call {
    fn finish(self, code: Code, message: &str) {
        let elapsed = self.started.elapsed();
        self.m.handled(code).increment(1);
        self.m.handling.record(elapsed.as_secs_f64());
        self.span.record("rpc.grpc.status_code", code as i32);
        if !self.access_log && code == Code::Ok {
            return;
        }
        let note = self
            .note
            .as_ref()
            .map(|n| std::mem::take(&mut *n.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default();
        let peer = self.peer.map(tracing::field::display);
        let message = (!message.is_empty()).then_some(message);
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: "gru_serve::access",
                    parent: &self.span,
                    $level,
                    method = self.m.method,
                    code = code_name(code),
                    duration_ms = elapsed.as_secs_f64() * 1e3,
                    peer,
                    model = note.model.as_deref(),
                    version = note.version,
                    session_id = note.session.as_deref(),
                    error = message,
                    "rpc"
                )
            };
        }
        match level(code) {
            tracing::Level::ERROR => line!(tracing::Level::ERROR),
            tracing::Level::WARN => line!(tracing::Level::WARN),
            _ => line!(tracing::Level::INFO),
        }
    }
}

/// The level of an RPC's log line, by code: the client's mistakes at info,
/// load shedding and unavailability at warn, the server's faults at error.
pub fn level(code: Code) -> tracing::Level {
    match code {
        Code::Ok
        | Code::Cancelled
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unauthenticated
        | Code::DeadlineExceeded => tracing::Level::INFO,
        Code::ResourceExhausted | Code::Unavailable => tracing::Level::WARN,
        Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
            tracing::Level::ERROR
        }
    }
}

/// Counts gRPC messages in a byte stream: each is a 5-byte prefix (flag,
/// 4-byte big-endian length) and its body, split across chunks anyhow.
#[derive(Default)]
struct Frames {
    /// Prefix bytes seen of the current message (0..5).
    prefix: usize,
    len: [u8; 4],
    /// Body bytes of the current message still to skip.
    skip: u64,
}

impl Frames {
    /// Messages whose prefix completed in `data`.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut n = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let take = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= take as u64;
                data = &data[take..];
                continue;
            }
            if self.prefix > 0 {
                self.len[self.prefix - 1] = data[0];
            }
            self.prefix += 1;
            data = &data[1..];
            if self.prefix == 5 {
                n += 1;
                self.prefix = 0;
                self.skip = u32::from_be_bytes(self.len) as u64;
            }
        }
        n
    }
}

fn feed<D: hyper::body::Buf>(frames: &mut Frames, frame: &Frame<D>) -> u64 {
    frame.data_ref().map_or(0, |d| frames.feed(d.chunk()))
}

/// A request body counting the messages it carries.
struct Counted {
    inner: tonic::body::Body,
    frames: Frames,
    counter: Counter,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            let n = feed(&mut this.frames, f);
            if n > 0 {
                this.counter.increment(n);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body counting the messages sent, finishing its call at the
/// trailers, at the end, or when dropped.
pub struct RpcBody<B> {
    inner: B,
    frames: Frames,
    call: Option<Box<Call>>,
}

impl<B> RpcBody<B> {
    fn finish(&mut self, status: Option<(Code, String)>) {
        if let Some(call) = self.call.take() {
            let (code, message) = status
                .or_else(|| call.head.clone())
                .unwrap_or((Code::Ok, String::new()));
            call.finish(code, &message);
        }
    }
}

impl<B> Drop for RpcBody<B> {
    fn drop(&mut self) {
        // Dropped before its status: the client went away (or the deadline
        // passed); a Trailers-Only reply may end without being polled.
        let status = match self.call.as_ref().and_then(|c| c.head.clone()) {
            Some(head) => head,
            None => (Code::Cancelled, String::new()),
        };
        self.finish(Some(status));
    }
}

impl<B> Body for RpcBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(call) = this.call.as_ref() {
                    let n = feed(&mut this.frames, f);
                    if n > 0 {
                        call.m.msg_sent.increment(n);
                    }
                }
                if let Some(t) = f.trailers_ref() {
                    let status = status_of(t);
                    this.finish(status);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Some((Code::Internal, String::new()))),
            Poll::Ready(None) => this.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_across_any_chunking() {
        // Three messages: 2, 0 and 300 body bytes.
        let mut wire = vec![0, 0, 0, 0, 2, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 44];
        wire.extend(std::iter::repeat_n(1u8, 300));
        for chunk in [1, 2, 3, 5, 7, 64, wire.len()] {
            let mut f = Frames::default();
            let n: u64 = wire.chunks(chunk).map(|c| f.feed(c)).sum();
            assert_eq!(n, 3, "chunks of {chunk}");
        }
    }

    #[test]
    fn unknown_paths_share_one_label_and_known_ones_keep_theirs() {
        assert_eq!(
            method_metrics("/gru.v1.GruService/Step").method,
            "gru.v1.GruService/Step"
        );
        assert_eq!(method_metrics("/gru.v1.GruService/Nope").method, "other");
        assert_eq!(
            method_metrics("/gru.v1.GruService/StepStream").grpc_type,
            "bidi_stream"
        );
    }

    #[test]
    fn levels_follow_who_is_at_fault() {
        assert_eq!(level(Code::NotFound), tracing::Level::INFO);
        assert_eq!(level(Code::InvalidArgument), tracing::Level::INFO);
        assert_eq!(level(Code::ResourceExhausted), tracing::Level::WARN);
        assert_eq!(level(Code::Internal), tracing::Level::ERROR);
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("no%20model%20%27x%27"), "no model 'x'");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
