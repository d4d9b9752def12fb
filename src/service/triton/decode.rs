//! `inference.ModelInferRequest` as the server reads it, decoded by hand.
//! build.rs maps the proto type here for the generated server only; clients
//! (tests, tools) build and send the generated type. Same wire format.
//!
//! The generated type cost a dozen allocations a request (the model name,
//! three parameter keys and their map, the input's name, datatype and
//! shape, the outputs' names, ...) and then a second pass to become the
//! core's [`InferRequest`]: ~20 % of a stream's server CPU (perf,
//! BENCHMARKS.md). Here the protocol's names are static ([`Name`]),
//! parameters land in [`Params`] as they are read, and [`into_request`]
//! only reads the tensors' bytes. Input and output tensors' own parameter
//! maps are skipped: the adapter reads none of them over gRPC.
//!
//! [`into_request`]: ModelInferRequest::into_request

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{
    bytes, check_wire_type, decode_key, decode_varint, encode_key, encode_varint,
    encoded_len_varint, int64, key_len, merge_loop, message, skip_field, string, DecodeContext,
    WireType,
};
use prost::DecodeError;

use super::error::TritonError;
use super::pb::{infer_parameter::ParameterChoice as C, InferParameter, InferTensorContents};
use super::tensor::{decode_raw, name, Data, InTensor, Name, Param};
use super::{Echo, InferRequest, Params, Refused};
use crate::service::matrix::decode_error;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInferRequest {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    /// `parameters`, each name once (a later entry replaces an earlier one,
    /// as a protobuf map); a value with no choice set is dropped.
    pub parameters: Params,
    pub inputs: Vec<Input>,
    /// The names of `outputs`.
    pub outputs: Vec<Name>,
    pub raw_input_contents: Vec<Bytes>,
}

/// `ModelInferRequest.InferInputTensor` without its parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Input {
    pub name: Name,
    pub datatype: Name,
    pub shape: Vec<i64>,
    pub contents: Option<Box<InferTensorContents>>,
}

fn param(p: InferParameter) -> Option<Param> {
    Some(match p.parameter_choice? {
        C::BoolParam(b) => Param::Bool(b),
        C::Int64Param(n) => Param::Int(n),
        C::StringParam(s) => Param::Str(s),
        C::DoubleParam(d) => Param::Double(d),
        C::Uint64Param(n) => Param::UInt(n),
    })
}

fn choice(p: &Param) -> InferParameter {
    InferParameter {
        parameter_choice: Some(match p {
            Param::Bool(b) => C::BoolParam(*b),
            Param::Int(n) => C::Int64Param(*n),
            Param::Str(s) => C::StringParam(s.clone()),
            Param::Double(d) => C::DoubleParam(*d),
            Param::UInt(n) => C::Uint64Param(*n),
        }),
    }
}

/// A string field as a [`Name`]: a known name is matched in the received
/// buffer and not copied.
fn read_name(wire_type: WireType, buf: &mut impl Buf) -> Result<Name, DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = decode_varint(buf)?;
    if len > buf.remaining() as u64 {
        return Err(decode_error("buffer underflow"));
    }
    let len = len as usize;
    let not_utf8 = || decode_error("invalid string value: data is not UTF-8 encoded");
    if buf.chunk().len() >= len {
        let n = name(std::str::from_utf8(&buf.chunk()[..len]).map_err(|_| not_utf8())?);
        buf.advance(len);
        Ok(n)
    } else {
        let mut v = vec![0; len];
        buf.copy_to_slice(&mut v);
        String::from_utf8(v)
            .map(Name::Owned)
            .map_err(|_| not_utf8())
    }
}

/// One `map<string, InferParameter>` entry: (key, value).
fn read_entry<B: Buf>(
    wire_type: WireType,
    buf: &mut B,
    ctx: DecodeContext,
) -> Result<(Name, InferParameter), DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let mut entry = (Name::Borrowed(""), InferParameter::default());
    merge_loop(&mut entry, buf, ctx, |(k, v), buf, ctx| {
        let (tag, wt) = decode_key(buf)?;
        match tag {
            1 => *k = read_name(wt, buf)?,
            2 => message::merge(wt, v, buf, ctx)?,
            _ => skip_field(wt, tag, buf, ctx)?,
        }
        Ok(())
    })?;
    Ok(entry)
}

fn read_input<B: Buf>(
    wire_type: WireType,
    buf: &mut B,
    ctx: DecodeContext,
) -> Result<Input, DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let mut t = Input::default();
    merge_loop(&mut t, buf, ctx, |t, buf, ctx| {
        let (tag, wt) = decode_key(buf)?;
        match tag {
            1 => t.name = read_name(wt, buf)?,
            2 => t.datatype = read_name(wt, buf)?,
            3 => int64::merge_repeated(wt, &mut t.shape, buf, ctx)?,
            5 => message::merge(wt, t.contents.get_or_insert_default().as_mut(), buf, ctx)?,
            _ => skip_field(wt, tag, buf, ctx)?,
        }
        Ok(())
    })?;
    Ok(t)
}

fn read_output<B: Buf>(
    wire_type: WireType,
    buf: &mut B,
    ctx: DecodeContext,
) -> Result<Name, DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let mut n = Name::Borrowed("");
    merge_loop(&mut n, buf, ctx, |n, buf, ctx| {
        let (tag, wt) = decode_key(buf)?;
        match tag {
            1 => *n = read_name(wt, buf)?,
            _ => skip_field(wt, tag, buf, ctx)?,
        }
        Ok(())
    })?;
    Ok(n)
}

/// A nested message's reader, for [`nested`].
trait Nested {
    type Out;
    fn read<B: Buf>(
        wire_type: WireType,
        buf: &mut B,
        ctx: DecodeContext,
    ) -> Result<Self::Out, DecodeError>;
}

/// The nested messages of a request: parameter entries, inputs, outputs.
struct Entry;
struct In;
struct Out;

impl Nested for Entry {
    type Out = (Name, InferParameter);
    fn read<B: Buf>(
        wt: WireType,
        buf: &mut B,
        ctx: DecodeContext,
    ) -> Result<Self::Out, DecodeError> {
        read_entry(wt, buf, ctx)
    }
}

impl Nested for In {
    type Out = Input;
    fn read<B: Buf>(wt: WireType, buf: &mut B, ctx: DecodeContext) -> Result<Input, DecodeError> {
        read_input(wt, buf, ctx)
    }
}

impl Nested for Out {
    type Out = Name;
    fn read<B: Buf>(wt: WireType, buf: &mut B, ctx: DecodeContext) -> Result<Name, DecodeError> {
        read_output(wt, buf, ctx)
    }
}

/// A nested message read from the buffer's first chunk as a plain slice,
/// which advances cheaply (tonic's buffer updates a `BytesMut` on every
/// read, ~6 % of the stream's server CPU with the generic reads); from the
/// buffer itself where the message runs past that chunk.
fn nested<N: Nested>(
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<N::Out, DecodeError> {
    let mut s = buf.chunk();
    let before = s.len();
    match N::read(wire_type, &mut s, ctx.clone()) {
        Ok(v) => {
            let used = before - s.len();
            buf.advance(used);
            Ok(v)
        }
        Err(_) => N::read(wire_type, buf, ctx),
    }
}

fn str_len(tag: u32, s: &str) -> usize {
    match s.len() {
        0 => 0,
        n => key_len(tag) + encoded_len_varint(n as u64) + n,
    }
}

fn put_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

fn entry_len((k, v): &(Name, Param)) -> usize {
    str_len(1, k) + message::encoded_len(2, &choice(v))
}

fn input_len(t: &Input) -> usize {
    str_len(1, &t.name)
        + str_len(2, &t.datatype)
        + int64::encoded_len_packed(3, &t.shape)
        + t.contents
            .as_ref()
            .map_or(0, |c| message::encoded_len(5, c.as_ref()))
}

fn delimited(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

impl prost::Message for ModelInferRequest {
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => string::merge(wire_type, &mut self.model_name, buf, ctx),
            2 => string::merge(wire_type, &mut self.model_version, buf, ctx),
            3 => string::merge(wire_type, &mut self.id, buf, ctx),
            4 => {
                let (k, v) = nested::<Entry>(wire_type, buf, ctx)?;
                self.parameters.set(k, param(v));
                Ok(())
            }
            5 => {
                let t = nested::<In>(wire_type, buf, ctx)?;
                self.inputs.push(t);
                Ok(())
            }
            6 => {
                let n = nested::<Out>(wire_type, buf, ctx)?;
                self.outputs.push(n);
                Ok(())
            }
            7 => bytes::merge_repeated(wire_type, &mut self.raw_input_contents, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    // Encoding is for tests and tools; the server only decodes requests.
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(1, &self.model_name, buf);
        put_str(2, &self.model_version, buf);
        put_str(3, &self.id, buf);
        for e in &self.parameters.0 {
            encode_key(4, WireType::LengthDelimited, buf);
            encode_varint(entry_len(e) as u64, buf);
            put_str(1, &e.0, buf);
            message::encode(2, &choice(&e.1), buf);
        }
        for t in &self.inputs {
            encode_key(5, WireType::LengthDelimited, buf);
            encode_varint(input_len(t) as u64, buf);
            put_str(1, &t.name, buf);
            put_str(2, &t.datatype, buf);
            int64::encode_packed(3, &t.shape, buf);
            if let Some(c) = &t.contents {
                message::encode(5, c.as_ref(), buf);
            }
        }
        for n in &self.outputs {
            encode_key(6, WireType::LengthDelimited, buf);
            encode_varint(str_len(1, n) as u64, buf);
            put_str(1, n, buf);
        }
        bytes::encode_repeated(7, &self.raw_input_contents, buf);
    }

    fn encoded_len(&self) -> usize {
        str_len(1, &self.model_name)
            + str_len(2, &self.model_version)
            + str_len(3, &self.id)
            + self
                .parameters
                .0
                .iter()
                .map(|e| delimited(4, entry_len(e)))
                .sum::<usize>()
            + self
                .inputs
                .iter()
                .map(|t| delimited(5, input_len(t)))
                .sum::<usize>()
            + self
                .outputs
                .iter()
                .map(|n| delimited(6, str_len(1, n)))
                .sum::<usize>()
            + bytes::encoded_len_repeated(7, &self.raw_input_contents)
    }

    fn clear(&mut self) {
        *self = ModelInferRequest::default();
    }
}

/// Typed `contents` of an input, by its datatype.
fn typed(datatype: &str, contents: Option<Box<InferTensorContents>>) -> Data {
    let c = contents.map(|c| *c).unwrap_or_default();
    match datatype {
        "FP32" => Data::F32(c.fp32_contents),
        "INT32" => Data::Int(c.int_contents.into_iter().map(i64::from).collect()),
        "INT64" => Data::Int(c.int64_contents),
        _ => Data::Unsupported,
    }
}

impl ModelInferRequest {
    /// The request as the core reads it: each input's values from its raw
    /// bytes or typed contents.
    pub fn into_request(self) -> Result<InferRequest, Refused> {
        let r = self;
        let refuse = |error, r: ModelInferRequest| Refused {
            error,
            echo: Echo {
                model: r.model_name,
                version: r.model_version,
                id: r.id,
            },
        };
        let raw = !r.raw_input_contents.is_empty();
        if raw && r.raw_input_contents.len() != r.inputs.len() {
            let e = TritonError::invalid(format!(
                "raw_input_contents has {} entries for {} inputs of model '{}'",
                r.raw_input_contents.len(),
                r.inputs.len(),
                r.model_name
            ));
            return Err(refuse(e, r));
        }
        let mut r = r;
        match tensors(
            &r.model_name,
            raw,
            std::mem::take(&mut r.inputs),
            &r.raw_input_contents,
        ) {
            Ok(inputs) => Ok(InferRequest {
                model: r.model_name,
                version: r.model_version,
                id: r.id,
                params: r.parameters,
                inputs,
                outputs: r.outputs,
            }),
            Err(e) => Err(refuse(e, r)),
        }
    }
}

/// The input tensors, from raw bytes or typed contents.
fn tensors(
    model: &str,
    raw: bool,
    tensors: Vec<Input>,
    raw_contents: &[Bytes],
) -> Result<Vec<InTensor>, TritonError> {
    let mut inputs = Vec::with_capacity(tensors.len());
    for (n, mut t) in tensors.into_iter().enumerate() {
        let data = if raw {
            if t.contents.is_some() {
                return Err(TritonError::invalid(format!(
                    "contents field must not be specified when using raw_input_contents for '{}' for model '{model}'",
                    t.name
                )));
            }
            decode_raw(&t.name, &t.datatype, &t.shape, &raw_contents[n])?
        } else {
            typed(&t.datatype, t.contents.take())
        };
        inputs.push(InTensor {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
            data,
        });
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message;

    use super::super::pb;
    use super::*;

    fn p(c: C) -> pb::InferParameter {
        pb::InferParameter {
            parameter_choice: Some(c),
        }
    }

    /// Everything the generated type can carry, as a client sends it.
    fn generated() -> pb::ModelInferRequest {
        use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
        pb::ModelInferRequest {
            model_name: "sine".into(),
            model_version: "3".into(),
            id: "req-é".into(),
            parameters: BTreeMap::from([
                ("sequence_id".into(), p(C::Int64Param(42))),
                ("sequence_start".into(), p(C::BoolParam(true))),
                ("custom".into(), p(C::StringParam("x".into()))),
                ("ratio".into(), p(C::DoubleParam(0.5))),
                ("big".into(), p(C::Uint64Param(u64::MAX))),
                ("unset".into(), pb::InferParameter::default()),
            ]),
            inputs: vec![
                InferInputTensor {
                    name: "INPUT".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 2, 3],
                    parameters: BTreeMap::from([("p".into(), p(C::BoolParam(true)))]),
                    contents: None,
                },
                InferInputTensor {
                    name: "SEQUENCE_LENGTH".into(),
                    datatype: "INT32".into(),
                    shape: vec![1],
                    contents: Some(Box::new(pb::InferTensorContents {
                        int_contents: vec![2],
                        ..Default::default()
                    })),
                    ..Default::default()
                },
            ],
            outputs: vec![
                InferRequestedOutputTensor {
                    name: "OUTPUT".into(),
                    parameters: BTreeMap::from([("binary_data".into(), p(C::BoolParam(true)))]),
                },
                InferRequestedOutputTensor {
                    name: "mine".into(),
                    ..Default::default()
                },
            ],
            raw_input_contents: vec![Bytes::from(vec![1u8; 24]), Bytes::from(vec![2u8; 4])],
        }
    }

    #[test]
    fn reads_what_the_generated_type_sends_and_writes_it_back() {
        let sent = generated();
        let got = ModelInferRequest::decode(&sent.encode_to_vec()[..]).unwrap();
        assert_eq!(
            (&*got.model_name, &*got.model_version, &*got.id),
            ("sine", "3", "req-é")
        );
        let mut params = got.parameters.0.clone();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            params,
            vec![
                ("big".into(), Param::UInt(u64::MAX)),
                ("custom".into(), Param::Str("x".into())),
                ("ratio".into(), Param::Double(0.5)),
                ("sequence_id".into(), Param::Int(42)),
                ("sequence_start".into(), Param::Bool(true)),
            ]
        );
        let key = |k: &str| {
            got.parameters
                .0
                .iter()
                .find(|(n, _)| n == k)
                .unwrap()
                .0
                .clone()
        };
        assert!(matches!(key("sequence_id"), Name::Borrowed(_)));
        assert!(matches!(key("custom"), Name::Owned(_)));
        assert_eq!(got.inputs.len(), 2);
        assert_eq!(
            (
                &*got.inputs[0].name,
                &*got.inputs[0].datatype,
                &got.inputs[0].shape[..]
            ),
            ("INPUT", "FP32", &[1i64, 2, 3][..])
        );
        assert!(matches!(got.inputs[0].name, Name::Borrowed(_)));
        assert_eq!(got.inputs[1].contents.as_ref().unwrap().int_contents, [2]);
        assert_eq!(got.outputs, [Name::from("OUTPUT"), Name::from("mine")]);
        assert_eq!(got.raw_input_contents, sent.raw_input_contents);

        // Written back, the generated type reads the same request, less the
        // tensors' parameter maps this type skips and the unset parameter.
        let mut expect = sent.clone();
        expect.parameters.remove("unset");
        expect.inputs[0].parameters.clear();
        expect.outputs[0].parameters.clear();
        let bytes = got.encode_to_vec();
        assert_eq!(bytes.len(), got.encoded_len());
        assert_eq!(pb::ModelInferRequest::decode(&bytes[..]).unwrap(), expect);
    }

    #[test]
    fn a_request_split_across_buffer_chunks_reads_the_same() {
        use prost::bytes::Buf;
        let bytes = generated().encode_to_vec();
        let whole = ModelInferRequest::decode(&bytes[..]).unwrap();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            let got = ModelInferRequest::decode(a.chain(b)).unwrap();
            assert_eq!(got, whole, "split at {cut}");
        }
    }

    #[test]
    fn a_repeated_parameter_keeps_its_last_value_and_an_unset_one_removes_it() {
        let entry = |k: &str, v: pb::InferParameter| {
            let mut one = pb::ModelInferRequest::default();
            one.parameters.insert(k.into(), v);
            one.encode_to_vec()
        };
        let mut wire = entry("sequence_id", p(C::Int64Param(1)));
        wire.extend(entry("sequence_end", p(C::BoolParam(true))));
        wire.extend(entry("sequence_id", p(C::Int64Param(2))));
        wire.extend(entry("sequence_end", pb::InferParameter::default()));
        let got = ModelInferRequest::decode(&wire[..]).unwrap();
        assert_eq!(
            got.parameters.0,
            vec![("sequence_id".into(), Param::Int(2))]
        );
        // The generated type agrees (a map's last entry wins).
        let generated = pb::ModelInferRequest::decode(&wire[..]).unwrap();
        assert_eq!(generated.parameters["sequence_id"], p(C::Int64Param(2)));
    }

    #[test]
    fn truncated_or_mistyped_fields_are_decode_errors_not_panics() {
        let bytes = generated().encode_to_vec();
        for cut in 1..bytes.len() {
            // Any prefix either decodes (a field boundary) or is an error.
            let _ = ModelInferRequest::decode(&bytes[..cut]);
        }
        assert!(ModelInferRequest::decode(&bytes[..bytes.len() - 1]).is_err());
        // model_name (tag 1) sent as a varint.
        assert!(ModelInferRequest::decode(&[0x08, 0x01][..]).is_err());
        // A parameter key that is not UTF-8.
        let bad = [0x22, 0x04, 0x0a, 0x02, 0xff, 0xfe];
        assert!(ModelInferRequest::decode(&bad[..]).is_err());
        // An input (tag 5) whose length runs past the end.
        assert!(ModelInferRequest::decode(&[0x2a, 0x09, 0x0a, 0x01][..]).is_err());
    }

    #[test]
    fn into_request_reads_raw_and_typed_inputs_and_refuses_a_mismatch() {
        let mut sent = generated();
        sent.inputs.truncate(1);
        sent.raw_input_contents.truncate(1);
        sent.outputs.truncate(1);
        let r = ModelInferRequest::decode(&sent.encode_to_vec()[..])
            .unwrap()
            .into_request()
            .unwrap();
        let one = f32::from_le_bytes([1; 4]);
        assert_eq!(r.inputs[0].data, Data::F32(vec![one; 6]));
        assert_eq!(r.outputs, [Name::from("OUTPUT")]);
        assert_eq!(r.params.get("sequence_id"), Some(&Param::Int(42)));

        let mut two_raw = generated();
        two_raw.raw_input_contents.truncate(1);
        let e = ModelInferRequest::decode(&two_raw.encode_to_vec()[..])
            .unwrap()
            .into_request()
            .unwrap_err();
        assert!(e
            .error
            .message
            .contains("raw_input_contents has 1 entries for 2 inputs"));
        assert_eq!((&*e.echo.model, &*e.echo.id), ("sine", "req-é"));
    }
}
