//! `--protocol triton-grpc | triton-http`: the same closed loop spoken in the
//! KServe v2 / Triton protocol, so its cost can be set beside gru.v1's on the
//! same server. A "session" is a Triton sequence (ids 1..=N) started with
//! START before the run.
//!
//! - triton-grpc: `ModelStreamInfer` streams carrying many sequences each,
//!   requests as tritonclient sends them (raw FP32 `INPUT [1, k, I]`,
//!   `sequence_id` int64).
//! - triton-http: one HTTP/1.1 keep-alive connection per sequence (HTTP/1.1
//!   has no multiplexing), a JSON body as curl or a plain HTTP client sends.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gru_serve::service::triton::pb as v2;
use prost::bytes::{BufMut, Bytes};
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstDecoder;

use crate::stream::{StreamOutcome, Window};
use crate::BoxError;

pub type V2 = v2::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>;

pub fn client(ch: Channel) -> V2 {
    V2::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn param(p: v2::infer_parameter::ParameterChoice) -> v2::InferParameter {
    v2::InferParameter {
        parameter_choice: Some(p),
    }
}

/// The inputs as `raw_input_contents` carries them (little-endian FP32),
/// encoded once: every request of a run sends the same rows.
pub fn raw(inputs: &[f32]) -> Bytes {
    inputs.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A sequence request as tritonclient builds it; `raw` from [`raw`].
pub fn request(model: &str, id: u64, start: bool, k: usize, raw: &Bytes) -> v2::ModelInferRequest {
    use v2::infer_parameter::ParameterChoice as P;
    let cols = raw.len() / 4 / k;
    let mut parameters = BTreeMap::new();
    parameters.insert("sequence_id".to_string(), param(P::Int64Param(id as i64)));
    parameters.insert("sequence_start".to_string(), param(P::BoolParam(start)));
    parameters.insert("sequence_end".to_string(), param(P::BoolParam(false)));
    v2::ModelInferRequest {
        model_name: model.to_string(),
        parameters,
        inputs: vec![v2::model_infer_request::InferInputTensor {
            name: "INPUT".into(),
            datatype: "FP32".into(),
            shape: vec![1, k as i64, cols as i64],
            ..Default::default()
        }],
        outputs: vec![v2::model_infer_request::InferRequestedOutputTensor {
            name: "OUTPUT".into(),
            ..Default::default()
        }],
        raw_input_contents: vec![raw.clone()],
        ..Default::default()
    }
}

/// START on each sequence (unary ModelInfer), concurrently over the channels.
pub async fn start_grpc(
    chans: &[Channel],
    model: &str,
    n: usize,
    k: usize,
    inputs: Arc<Vec<f32>>,
) -> Result<(), BoxError> {
    let mut starts = tokio::task::JoinSet::new();
    for s in 0..n {
        let mut c = client(chans[s % chans.len()].clone());
        let (model, inputs) = (model.to_string(), raw(&inputs));
        starts.spawn(async move {
            c.model_infer(request(&model, s as u64 + 1, true, k, &inputs))
                .await
                .map(drop)
                .map_err(|e| format!("ModelInfer START: {e}"))
        });
    }
    while let Some(r) = starts.join_next().await {
        r??;
    }
    Ok(())
}

/// The stream's codec. A request goes out as the bytes prost encoded once
/// for its sequence (every request of a sequence is the same), a reply is
/// read into [`Reply`], which keeps what the loop looks at and lets prost
/// skip the names, datatype and parameters. The bytes on the wire are the
/// generated client's; its per-message strings, maps and their decoding
/// made this client ~1.5 µs a message dearer than gru.v1's on the same two
/// cores (BENCHMARKS.md), CPU the server under test then lacked.
#[derive(Clone, Copy, Default)]
struct Lean;

impl Codec for Lean {
    type Encode = Bytes;
    type Decode = Reply;
    type Encoder = Pre;
    type Decoder = ProstDecoder<Reply>;
    fn encoder(&mut self) -> Pre {
        Pre
    }
    fn decoder(&mut self) -> ProstDecoder<Reply> {
        ProstDecoder::default()
    }
}

/// Writes a request encoded beforehand.
struct Pre;

impl Encoder for Pre {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

/// `ModelStreamInferResponse`, the fields the loop reads (same tags).
#[derive(Clone, PartialEq, prost::Message)]
struct Reply {
    #[prost(string, tag = "1")]
    error_message: String,
    #[prost(message, optional, tag = "2")]
    infer_response: Option<ReplyBody>,
}

/// `ModelInferResponse`: the outputs' shapes and their bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct ReplyBody {
    #[prost(message, repeated, tag = "5")]
    outputs: Vec<ReplyOutput>,
    #[prost(bytes = "bytes", repeated, tag = "6")]
    raw_output_contents: Vec<Bytes>,
}

/// `ModelInferResponse.InferOutputTensor`: its shape.
#[derive(Clone, PartialEq, prost::Message)]
struct ReplyOutput {
    #[prost(int64, repeated, tag = "3")]
    shape: Vec<i64>,
}

/// One ModelStreamInfer stream: its sequences in a closed loop. Replies come
/// in request order, so a FIFO pairs them with their send times.
pub async fn run_grpc_stream(
    ch: Channel,
    model: String,
    seqs: Vec<u64>,
    k: usize,
    inputs: Arc<Vec<f32>>,
    w: Window,
    out_cols: Arc<AtomicU64>,
) -> StreamOutcome {
    let mut o = StreamOutcome::default();
    if seqs.is_empty() {
        return o;
    }
    let (tx, rx) = mpsc::channel::<Bytes>(seqs.len() + 1);
    let body = raw(&inputs);
    let msgs: Vec<Bytes> = seqs
        .iter()
        .map(|&id| request(&model, id, false, k, &body).encode_to_vec().into())
        .collect();
    let mut inflight: VecDeque<(usize, Instant)> = VecDeque::with_capacity(seqs.len());
    for (s, m) in msgs.iter().enumerate() {
        let _ = tx.try_send(m.clone());
        inflight.push_back((s, Instant::now()));
    }
    let mut g = tonic::client::Grpc::new(ch).max_decoding_message_size(64 << 20);
    let path = PathAndQuery::from_static("/inference.GRPCInferenceService/ModelStreamInfer");
    let opened = match g.ready().await {
        Ok(()) => {
            g.streaming(tonic::Request::new(ReceiverStream::new(rx)), path, Lean)
                .await
        }
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    let mut replies = match opened {
        Ok(r) => r.into_inner(),
        Err(e) => {
            o.errors += 1;
            o.first_error = Some(format!("ModelStreamInfer: {e}"));
            return o;
        }
    };
    let mut tx = Some(tx);
    while let Some(m) = o.next_reply(&mut replies).await {
        let now = Instant::now();
        let Some((s, sent)) = inflight.pop_front() else {
            o.first_error
                .get_or_insert_with(|| "a reply with nothing in flight".into());
            break;
        };
        let in_window = sent >= w.start && now <= w.end;
        if m.error_message.is_empty() {
            if in_window {
                o.ok += 1;
                o.latencies_us
                    .push((now - sent).as_micros().min(u32::MAX as u128) as u32);
            }
            if let Some(out) = m.infer_response.as_ref().and_then(|r| r.outputs.first()) {
                out_cols.store(*out.shape.last().unwrap_or(&0) as u64, Ordering::Relaxed);
            }
        } else {
            if in_window {
                o.errors += 1;
            }
            o.first_error
                .get_or_insert_with(|| format!("in-band error: {}", m.error_message));
        }
        if now < w.end {
            if let Some(t) = &tx {
                if t.send(msgs[s].clone()).await.is_err() {
                    break;
                }
                inflight.push_back((s, Instant::now()));
            }
        } else if inflight.is_empty() {
            tx = None;
        }
    }
    o
}

/// A keep-alive HTTP/1.1 connection posting one body after another.
struct Http {
    r: BufReader<TcpStream>,
    head: String,
}

impl Http {
    async fn connect(addr: &str, model: &str) -> Result<Http, BoxError> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Http {
            r: BufReader::new(s),
            head: format!(
                "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
            ),
        })
    }

    /// One request and its reply: (status, body).
    async fn post(&mut self, body: &[u8]) -> Result<(u16, Vec<u8>), BoxError> {
        let head = format!("{}Content-Length: {}\r\n\r\n", self.head, body.len());
        let s = self.r.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not an HTTP status line: {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            if self.r.read_line(&mut line).await? == 0 {
                return Err("connection closed in the reply's headers".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// The JSON body of a sequence request (what curl users send).
fn json_body(id: u64, start: bool, k: usize, inputs: &[f32]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "parameters": {"sequence_id": id, "sequence_start": start},
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, k, inputs.len() / k], "data": inputs}],
        "outputs": [{"name": "OUTPUT"}],
    }))
    .expect("a JSON body")
}

/// One sequence over its own HTTP connection: START, then a closed loop.
#[allow(clippy::too_many_arguments)]
pub async fn run_http_sequence(
    addr: String,
    model: String,
    id: u64,
    k: usize,
    inputs: Arc<Vec<f32>>,
    start_at: Instant,
    w: Window,
    out_cols: Arc<AtomicU64>,
) -> StreamOutcome {
    let mut o = StreamOutcome::default();
    let fail = |o: &mut StreamOutcome, e: String| {
        o.errors += 1;
        o.first_error.get_or_insert(e);
    };
    let mut http = match Http::connect(&addr, &model).await {
        Ok(h) => h,
        Err(e) => {
            fail(&mut o, format!("connect {addr}: {e}"));
            return o;
        }
    };
    match http.post(&json_body(id, true, k, &inputs)).await {
        Ok((200, _)) => {}
        Ok((code, b)) => {
            fail(
                &mut o,
                format!("START: {code} {}", String::from_utf8_lossy(&b)),
            );
            return o;
        }
        Err(e) => {
            fail(&mut o, format!("START: {e}"));
            return o;
        }
    }
    let body = json_body(id, false, k, &inputs);
    tokio::time::sleep_until(start_at.into()).await;
    while Instant::now() < w.end {
        let sent = Instant::now();
        let r = http.post(&body).await;
        let now = Instant::now();
        let in_window = sent >= w.start && now <= w.end;
        match r {
            Ok((200, b)) => {
                if in_window {
                    o.ok += 1;
                    o.latencies_us
                        .push((now - sent).as_micros().min(u32::MAX as u128) as u32);
                }
                if out_cols.load(Ordering::Relaxed) == 0 {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                        let cols = v["outputs"][0]["shape"][2].as_u64().unwrap_or(0);
                        out_cols.store(cols, Ordering::Relaxed);
                    }
                }
            }
            Ok((code, b)) => {
                if in_window {
                    o.errors += 1;
                }
                o.first_error
                    .get_or_insert_with(|| format!("{code} {}", String::from_utf8_lossy(&b)));
            }
            Err(e) => {
                fail(&mut o, format!("HTTP: {e}"));
                break;
            }
        }
    }
    o
}
