//! `inference.ModelInferRequest` as the server reads it, decoded by hand.
//! build.rs maps the proto type here for the generated server only; clients
//! (tests, tools) build and send the generated type. Same wire format.
//!
//! The generated type cost a dozen allocations a request (the model name,
//! three parameter keys and their map, the input's name, datatype and
//! shape, the outputs' names, ...) and then a second pass to become the
//! core's [`InferRequest`]: ~20 % of a stream's server CPU (perf,
//! BENCHMARKS.md). Here the message is parsed as one slice (tonic hands it
//! over in one buffer), the protocol's names are matched as bytes and kept
//! static ([`Name`]), parameters land in [`Params`] as they are read, the
//! tensors' bytes stay views of the received buffer, and [`into_request`]
//! only reads them. Input and output tensors' own parameter maps are
//! skipped: the adapter reads none of them over gRPC.
//!
//! [`into_request`]: ModelInferRequest::into_request

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{
    bytes, check_wire_type, decode_key, decode_varint, encode_key, encode_varint,
    encoded_len_varint, int64, key_len, message, skip_field, DecodeContext, WireType,
};
use prost::DecodeError;
use prost::Message;

use super::error::TritonError;
use super::pb::{infer_parameter::ParameterChoice as C, InferParameter, InferTensorContents};
use super::tensor::{decode_raw, known, Data, InTensor, Name, Param};
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

fn underflow() -> DecodeError {
    decode_error("buffer underflow")
}

fn not_utf8() -> DecodeError {
    decode_error("invalid string value: data is not UTF-8 encoded")
}

/// A length-delimited field's body.
fn delimited<'a>(wire_type: WireType, s: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = decode_varint(s)?;
    if len > s.len() as u64 {
        return Err(underflow());
    }
    let (body, rest) = s.split_at(len as usize);
    *s = rest;
    Ok(body)
}

fn string(body: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(body)
        .map(str::to_owned)
        .map_err(|_| not_utf8())
}

/// A name: one of the protocol's is matched as bytes (no copy, and no
/// UTF-8 check: it is a known string).
fn name_of(body: &[u8]) -> Result<Name, DecodeError> {
    match known(body) {
        Some(k) => Ok(Name::Borrowed(k)),
        None => string(body).map(Name::Owned),
    }
}

/// `InferParameter`: the last choice set (a oneof), if any.
fn param(mut s: &[u8]) -> Result<Option<Param>, DecodeError> {
    let mut p = None;
    while !s.is_empty() {
        let (tag, wt) = decode_key(&mut s)?;
        let varint = |s: &mut &[u8]| {
            check_wire_type(WireType::Varint, wt)?;
            decode_varint(s)
        };
        p = Some(match tag {
            1 => Param::Bool(varint(&mut s)? != 0),
            2 => Param::Int(varint(&mut s)? as i64),
            3 => Param::Str(string(delimited(wt, &mut s)?)?),
            4 => {
                check_wire_type(WireType::SixtyFourBit, wt)?;
                let (d, rest) = s.split_first_chunk::<8>().ok_or_else(underflow)?;
                s = rest;
                Param::Double(f64::from_le_bytes(*d))
            }
            5 => Param::UInt(varint(&mut s)?),
            _ => {
                skip_field(wt, tag, &mut s, DecodeContext::default())?;
                continue;
            }
        });
    }
    Ok(p)
}

/// One `map<string, InferParameter>` entry: (key, value if set).
fn entry(mut s: &[u8]) -> Result<(Name, Option<Param>), DecodeError> {
    let (mut k, mut v) = (Name::Borrowed(""), None);
    while !s.is_empty() {
        let (tag, wt) = decode_key(&mut s)?;
        match tag {
            1 => k = name_of(delimited(wt, &mut s)?)?,
            // A value sent twice merges: a later choice replaces.
            2 => v = param(delimited(wt, &mut s)?)?.or(v),
            _ => skip_field(wt, tag, &mut s, DecodeContext::default())?,
        }
    }
    Ok((k, v))
}

fn input(mut s: &[u8]) -> Result<Input, DecodeError> {
    let mut t = Input::default();
    while !s.is_empty() {
        let (tag, wt) = decode_key(&mut s)?;
        match tag {
            1 => t.name = name_of(delimited(wt, &mut s)?)?,
            2 => t.datatype = name_of(delimited(wt, &mut s)?)?,
            3 => int64::merge_repeated(wt, &mut t.shape, &mut s, DecodeContext::default())?,
            5 => {
                let body = delimited(wt, &mut s)?;
                t.contents.get_or_insert_default().merge(body)?;
            }
            _ => skip_field(wt, tag, &mut s, DecodeContext::default())?,
        }
    }
    Ok(t)
}

/// `InferRequestedOutputTensor`: its name.
fn output(mut s: &[u8]) -> Result<Name, DecodeError> {
    let mut n = Name::Borrowed("");
    while !s.is_empty() {
        let (tag, wt) = decode_key(&mut s)?;
        match tag {
            1 => n = name_of(delimited(wt, &mut s)?)?,
            _ => skip_field(wt, tag, &mut s, DecodeContext::default())?,
        }
    }
    Ok(n)
}

/// The request's fields: all length-delimited.
const FIELDS: std::ops::RangeInclusive<u32> = 1..=7;

impl ModelInferRequest {
    /// One top-level field from its body; `bytes` gives the body as
    /// `Bytes`, so `raw_input_contents` stays a view of the received
    /// buffer, not a copy.
    fn field(
        &mut self,
        tag: u32,
        body: &[u8],
        bytes: impl FnOnce() -> Bytes,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => self.model_name = string(body)?,
            2 => self.model_version = string(body)?,
            3 => self.id = string(body)?,
            4 => {
                let (k, v) = entry(body)?;
                self.parameters.set(k, v);
            }
            5 => self.inputs.push(input(body)?),
            6 => self.outputs.push(output(body)?),
            _ => self.raw_input_contents.push(bytes()),
        }
        Ok(())
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

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

impl prost::Message for ModelInferRequest {
    /// The whole message parsed as one slice: tonic hands a message over
    /// in one contiguous buffer, taken here as `Bytes` without a copy. A
    /// slice advances for free where the generic reads pay a `BytesMut`
    /// update each (prost's generated decoding of this message took ~500 ns
    /// a request, ~20 % of a stream's server CPU: BENCHMARKS.md).
    fn merge(&mut self, mut buf: impl Buf) -> Result<(), DecodeError> {
        let b = buf.copy_to_bytes(buf.remaining());
        let mut s = &b[..];
        while !s.is_empty() {
            let (tag, wt) = decode_key(&mut s)?;
            if !FIELDS.contains(&tag) {
                skip_field(wt, tag, &mut s, DecodeContext::default())?;
                continue;
            }
            let body = delimited(wt, &mut s)?;
            let at = b.len() - s.len() - body.len();
            self.field(tag, body, || b.slice(at..at + body.len()))?;
        }
        Ok(())
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if !FIELDS.contains(&tag) {
            return skip_field(wire_type, tag, buf, ctx);
        }
        check_wire_type(WireType::LengthDelimited, wire_type)?;
        let len = decode_varint(buf)?;
        if len > buf.remaining() as u64 {
            return Err(underflow());
        }
        let body = buf.copy_to_bytes(len as usize);
        self.field(tag, &body, || body.clone())
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
                .map(|e| delimited_len(4, entry_len(e)))
                .sum::<usize>()
            + self
                .inputs
                .iter()
                .map(|t| delimited_len(5, input_len(t)))
                .sum::<usize>()
            + self
                .outputs
                .iter()
                .map(|n| delimited_len(6, str_len(1, n)))
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
    pub fn into_request(mut self) -> Result<InferRequest, Refused> {
        let inputs = std::mem::take(&mut self.inputs);
        match tensors(&self.model_name, inputs, &self.raw_input_contents) {
            Ok(inputs) => Ok(InferRequest {
                model: self.model_name,
                version: self.model_version,
                id: self.id,
                params: self.parameters,
                inputs,
                outputs: self.outputs,
            }),
            Err(error) => Err(Refused {
                error,
                echo: Echo {
                    model: self.model_name,
                    version: self.model_version,
                    id: self.id,
                },
            }),
        }
    }
}

/// The input tensors, from raw bytes (one entry per input) or typed
/// contents.
fn tensors(model: &str, tensors: Vec<Input>, raw: &[Bytes]) -> Result<Vec<InTensor>, TritonError> {
    if !raw.is_empty() && raw.len() != tensors.len() {
        return Err(TritonError::invalid(format!(
            "raw_input_contents has {} entries for {} inputs of model '{model}'",
            raw.len(),
            tensors.len()
        )));
    }
    let mut inputs = Vec::with_capacity(tensors.len());
    for (n, t) in tensors.into_iter().enumerate() {
        let data = match raw.get(n) {
            Some(bytes) => {
                if t.contents.is_some() {
                    return Err(TritonError::invalid(format!(
                        "contents field must not be specified when using raw_input_contents for '{}' for model '{model}'",
                        t.name
                    )));
                }
                decode_raw(&t.name, &t.datatype, &t.shape, bytes)?
            }
            None => typed(&t.datatype, t.contents),
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
mod tests;
