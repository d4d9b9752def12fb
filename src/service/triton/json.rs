//! The inference request and response in the HTTP/JSON form: tensors as
//! JSON `data` or, with Triton's binary-data extension (what
//! tritonclient.http sends by default), as raw bytes after the JSON, whose
//! length `Inference-Header-Content-Length` gives.

use std::collections::HashMap;

use serde_json::{json, Value};
use tonic::codegen::http;

use super::error::TritonError;
use super::tensor::{decode_raw, Data, InTensor, OutTensor, Param};
use super::{InferRequest, InferResponse, Params};

/// The header giving the JSON part's length when binary data follows.
pub(super) const HEADER_LENGTH: &str = "inference-header-content-length";

/// A response body: JSON alone, or JSON then binary outputs (`json_len`
/// is then the JSON part's length, for [`HEADER_LENGTH`]).
pub(super) struct Body {
    pub bytes: Vec<u8>,
    pub json_len: Option<usize>,
}

fn json_param(v: &Value) -> Option<Param> {
    Some(match v {
        Value::Bool(b) => Param::Bool(*b),
        Value::String(s) => Param::Str(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Param::Int(i),
            (None, Some(u)) => Param::UInt(u),
            _ => Param::Double(n.as_f64()?),
        },
        _ => return None,
    })
}

fn params(v: Option<&Value>) -> Params {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| json_param(v).map(|p| (k.clone(), p)))
                .collect()
        })
        .unwrap_or_default()
}

/// A string member of `v` ("" when absent).
fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The elements of an array member of `v` (none when absent).
fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// Flattens (possibly nested) JSON arrays of numbers.
fn flatten(v: &Value, out: &mut Vec<f64>) -> bool {
    match v {
        Value::Array(a) => a.iter().all(|x| flatten(x, out)),
        Value::Number(n) => n.as_f64().map(|f| out.push(f)).is_some(),
        _ => false,
    }
}

/// The request, and for each output whether it goes back as binary data.
pub(super) fn decode(
    model: &str,
    version: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(InferRequest, HashMap<String, bool>), TritonError> {
    let json_len = match headers.get(HEADER_LENGTH).and_then(|v| v.to_str().ok()) {
        None => body.len(),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= body.len() => n,
            _ => {
                return Err(TritonError::invalid(format!(
                    "Inference-Header-Content-Length {v} does not fit the {} byte body",
                    body.len()
                )))
            }
        },
    };
    let v: Value = serde_json::from_slice(&body[..json_len])
        .map_err(|e| TritonError::invalid(format!("failed to parse the request JSON: {e}")))?;
    let mut binary = &body[json_len..];
    let params = params(v.get("parameters"));
    let mut inputs = Vec::new();
    for t in items(&v, "inputs") {
        let (name, datatype) = (text(t, "name"), text(t, "datatype"));
        let shape: Vec<i64> = t
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .ok_or_else(|| TritonError::invalid(format!("input '{name}' has no shape")))?;
        let size = t
            .get("parameters")
            .and_then(|p| p.get("binary_data_size"))
            .and_then(Value::as_u64);
        let data = match size {
            Some(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > binary.len() {
                    return Err(TritonError::invalid(format!(
                        "input '{name}': binary_data_size {n} is past the end of the body"
                    )));
                }
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                decode_raw(&name, &datatype, &shape, mine)?
            }
            None => {
                let mut vals = Vec::new();
                if !t.get("data").is_some_and(|d| flatten(d, &mut vals)) {
                    return Err(TritonError::invalid(format!(
                        "input '{name}': 'data' must be an array of numbers"
                    )));
                }
                match datatype.as_str() {
                    "FP32" => Data::F32(vals.into_iter().map(|x| x as f32).collect()),
                    "INT32" | "INT64" => Data::Int(vals.into_iter().map(|x| x as i64).collect()),
                    _ => Data::Unsupported,
                }
            }
        };
        inputs.push(InTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            data,
        });
    }
    let all_binary = matches!(params.get("binary_data_output"), Some(Param::Bool(true)));
    let mut binary_out = HashMap::new();
    binary_out.insert(String::new(), all_binary);
    let mut outputs = Vec::new();
    for o in items(&v, "outputs") {
        let name = text(o, "name");
        let b = o
            .get("parameters")
            .and_then(|p| p.get("binary_data"))
            .and_then(Value::as_bool)
            .unwrap_or(all_binary);
        binary_out.insert(name.clone(), b);
        outputs.push(name.into());
    }
    Ok((
        InferRequest {
            model: model.to_string(),
            version: version.to_string(),
            id: v
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            params,
            inputs,
            outputs,
        },
        binary_out,
    ))
}

pub(super) fn encode(r: InferResponse, binary_out: &HashMap<String, bool>) -> Body {
    let default = binary_out.get("").copied().unwrap_or(false);
    let mut blobs: Vec<u8> = Vec::new();
    let outputs: Vec<Value> = r
        .outputs
        .iter()
        .map(|t: &OutTensor| {
            let mut o = json!({"name": t.name, "datatype": "FP32", "shape": t.shape});
            if binary_out.get(t.name).copied().unwrap_or(default) {
                let raw = t.raw();
                o["parameters"] = json!({"binary_data_size": raw.len()});
                blobs.extend_from_slice(&raw);
            } else {
                o["data"] = json!(t.data.as_slice());
            }
            o
        })
        .collect();
    let head = json!({
        "model_name": r.model,
        "model_version": r.version.to_string(),
        "id": r.id,
        "outputs": outputs,
    })
    .to_string()
    .into_bytes();
    if blobs.is_empty() {
        return Body {
            bytes: head,
            json_len: None,
        };
    }
    let len = head.len();
    let mut bytes = head;
    bytes.extend_from_slice(&blobs);
    Body {
        bytes,
        json_len: Some(len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_binary_inputs_decode_alike() {
        let headers = http::HeaderMap::new();
        let body = br#"{"id":"7","parameters":{"sequence_id":42,"sequence_start":true},
            "inputs":[{"name":"INPUT","datatype":"FP32","shape":[1,2,1],"data":[[[0.5],[1.5]]]}]}"#;
        let (r, _) = decode("m", "", &headers, body).unwrap();
        assert_eq!(r.params.get("sequence_id"), Some(&Param::Int(42)));
        assert_eq!(r.inputs[0].data, Data::F32(vec![0.5, 1.5]));

        let json = br#"{"inputs":[{"name":"INPUT","datatype":"FP32","shape":[1,2,1],"parameters":{"binary_data_size":8}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = json.to_vec();
        for v in [0.5f32, 1.5] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let mut h = http::HeaderMap::new();
        h.insert(HEADER_LENGTH, json.len().to_string().parse().unwrap());
        let (r, binary) = decode("m", "", &h, &body).unwrap();
        assert_eq!(r.inputs[0].data, Data::F32(vec![0.5, 1.5]));
        assert_eq!(binary.get(""), Some(&true));
    }
}
