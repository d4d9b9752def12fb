//! `inference.ModelStreamInferResponse`, encoded by hand (build.rs maps the
//! proto type here with `extern_path`, as gru.v1's `Matrix`).
//!
//! The wire format is the .proto's, so tritonclient and every other client
//! read it as generated; clients decode it into the generated fields
//! (`error_message`, `infer_response`). What differs is the server's reply:
//! a [`InferResponse`] is written straight into the stream's buffer — the
//! floats from the engine's outcome, the names and the
//! `triton_final_response` parameter as constants — where building the
//! generated message took a dozen allocations and two copies of the floats
//! per reply (the largest item of the stream's profile, BENCHMARKS.md).

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, encode_key, encode_varint, encoded_len_varint, key_len};
use prost::encoding::{DecodeContext, WireType};
use prost::DecodeError;

use super::pb::ModelInferResponse;
use super::InferResponse;
use crate::service::matrix::put_f32s;

#[derive(Clone, Default, Debug)]
pub struct ModelStreamInferResponse {
    pub error_message: String,
    pub infer_response: Option<ModelInferResponse>,
    /// Server side: a reply encoded from the core's response, in place of
    /// `infer_response` (see [`ModelStreamInferResponse::reply`]).
    reply: Option<InferResponse>,
}

/// The stream's mark on every response (tritonclient's decoupled-model
/// handling reads it): `parameters["triton_final_response"] = bool true`.
const FINAL: &str = "triton_final_response";
/// `InferParameter { bool_param: true }`.
const TRUE_PARAM: [u8; 2] = [0x08, 0x01];

impl ModelStreamInferResponse {
    /// A response as the generated type would carry it (errors, and what
    /// clients decode).
    pub fn new(error_message: String, infer_response: Option<ModelInferResponse>) -> Self {
        ModelStreamInferResponse {
            error_message,
            infer_response,
            reply: None,
        }
    }

    /// A successful reply, encoded from `r` with `triton_final_response`.
    pub fn reply(r: InferResponse) -> Self {
        ModelStreamInferResponse {
            reply: Some(r),
            ..Default::default()
        }
    }
}

fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

/// A nested message's length with its key and length prefix.
fn field_len(tag: u32, body: usize) -> usize {
    key_len(tag) + encoded_len_varint(body as u64) + body
}

fn put_head(tag: u32, body: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(body as u64, buf);
}

/// Decimal digits of `v` without allocating (`model_version`).
fn decimal(v: u64, out: &mut [u8; 20]) -> &str {
    let mut n = out.len();
    let mut v = v;
    loop {
        n -= 1;
        out[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&out[n..]).unwrap_or("0")
}

/// The map entry `triton_final_response → true` (field 4 of the response).
fn final_entry_len() -> usize {
    str_len(1, FINAL) + field_len(2, TRUE_PARAM.len())
}

fn shape_len(shape: &[i64]) -> usize {
    shape.iter().map(|&d| encoded_len_varint(d as u64)).sum()
}

/// `InferOutputTensor { name, datatype: "FP32", shape }`.
fn tensor_len(name: &str, shape: &[i64]) -> usize {
    str_len(1, name) + str_len(2, "FP32") + field_len(3, shape_len(shape))
}

/// The `ModelInferResponse` body of a reply.
fn reply_len(r: &InferResponse) -> usize {
    let mut digits = [0u8; 20];
    let mut n = str_len(1, &r.model)
        + str_len(2, decimal(r.version, &mut digits))
        + str_len(3, &r.id)
        + field_len(4, final_entry_len());
    for t in &r.outputs {
        n += field_len(5, tensor_len(t.name, &t.shape));
    }
    for t in &r.outputs {
        n += field_len(6, t.data.as_slice().len() * 4);
    }
    n
}

/// Fields in number order, as prost writes the generated type.
fn put_reply(r: &InferResponse, buf: &mut impl BufMut) {
    let mut digits = [0u8; 20];
    put_str(1, &r.model, buf);
    put_str(2, decimal(r.version, &mut digits), buf);
    put_str(3, &r.id, buf);
    put_head(4, final_entry_len(), buf);
    put_str(1, FINAL, buf);
    put_head(2, TRUE_PARAM.len(), buf);
    buf.put_slice(&TRUE_PARAM);
    for t in &r.outputs {
        put_head(5, tensor_len(t.name, &t.shape), buf);
        put_str(1, t.name, buf);
        put_str(2, "FP32", buf);
        put_head(3, shape_len(&t.shape), buf);
        for &d in &t.shape {
            encode_varint(d as u64, buf);
        }
    }
    for t in &r.outputs {
        let data = t.data.as_slice();
        put_head(6, data.len() * 4, buf);
        put_f32s(data, buf);
    }
}

impl prost::Message for ModelStreamInferResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(1, &self.error_message, buf);
        if let Some(r) = &self.reply {
            put_head(2, reply_len(r), buf);
            put_reply(r, buf);
        } else if let Some(r) = &self.infer_response {
            encoding::message::encode(2, r, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::string::merge(wire_type, &mut self.error_message, buf, ctx),
            2 => encoding::message::merge(
                wire_type,
                self.infer_response.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        str_len(1, &self.error_message)
            + match (&self.reply, &self.infer_response) {
                (Some(r), _) => field_len(2, reply_len(r)),
                (None, Some(r)) => encoding::message::encoded_len(2, r),
                (None, None) => 0,
            }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message;

    use super::super::grpc::encode;
    use super::super::pb;
    use super::super::tensor::{Floats, OutTensor};
    use super::*;
    use crate::engine::StepOutcome;

    /// The generated type's encoding of the same reply: what the hand
    /// encoder must equal byte for byte.
    fn generated(r: InferResponse) -> Vec<u8> {
        let mut resp = encode(r);
        resp.parameters.insert(
            FINAL.to_string(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(true)),
            },
        );
        ModelStreamInferResponse::new(String::new(), Some(resp)).encode_to_vec()
    }

    fn response(id: &str, version: u64, outputs: Vec<OutTensor>) -> InferResponse {
        InferResponse {
            model: "sine".into(),
            version,
            id: id.into(),
            outputs,
        }
    }

    #[test]
    fn replies_encode_byte_for_byte_as_the_generated_type_and_decode_back() {
        let outcome = Arc::new(StepOutcome {
            outputs: (0..300).map(|v| v as f32 * 0.25 - 7.0).collect(),
            start_step: 3,
            next_step: 5,
            state: vec![1.0, f32::MIN_POSITIVE, -0.0, 3.5],
        });
        let step = |name, shape, data| OutTensor { name, shape, data };
        let cases = [
            response(
                "req-7",
                1,
                vec![
                    step("OUTPUT", [1, 2, 150], Floats::Outputs(outcome.clone())),
                    step("STATE_OUT", [1, 1, 4], Floats::State(outcome.clone())),
                ],
            ),
            response(
                "",
                12_345_678_901,
                vec![step(
                    "OUTPUT",
                    [1, 2, 150],
                    Floats::Outputs(outcome.clone()),
                )],
            ),
            response(
                "x",
                0,
                vec![step(
                    "STATE_OUT",
                    [300, 1, 1],
                    Floats::Owned(vec![0.5; 300]),
                )],
            ),
            response("", 10, vec![]),
        ];
        for r in cases {
            let hand = ModelStreamInferResponse::reply(r.clone());
            let bytes = hand.encode_to_vec();
            assert_eq!(bytes.len(), hand.encoded_len());
            assert_eq!(bytes, generated(r.clone()), "{r:?}");
            let back = ModelStreamInferResponse::decode(&bytes[..]).unwrap();
            let got = back.infer_response.unwrap();
            assert_eq!(got.model_version, r.version.to_string());
            assert_eq!(got.id, r.id);
            for (n, t) in r.outputs.iter().enumerate() {
                assert_eq!(got.outputs[n].name, t.name);
                assert_eq!(got.outputs[n].shape, t.shape);
                assert_eq!(&got.raw_output_contents[n][..], &t.raw()[..]);
            }
            assert!(back.error_message.is_empty());
        }
    }

    #[test]
    fn errors_and_decoded_messages_round_trip_as_generated() {
        let head = pb::ModelInferResponse {
            model_name: "sine".into(),
            id: "9".into(),
            ..Default::default()
        };
        let m = ModelStreamInferResponse::new("no START".into(), Some(head.clone()));
        let back = ModelStreamInferResponse::decode(&m.encode_to_vec()[..]).unwrap();
        assert_eq!(back.error_message, "no START");
        assert_eq!(back.infer_response, Some(head));
        assert_eq!(
            ModelStreamInferResponse::default().encode_to_vec(),
            Vec::<u8>::new()
        );
    }
}
