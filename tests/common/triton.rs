//! KServe v2 / Triton requests on the small model (`server::small_repo`,
//! model "m"), shared by triton.rs and durable_redis.rs.

use std::collections::BTreeMap;

use gru_serve::service::triton::pb as v2;

use super::sessions::I;

pub fn param_int(n: i64) -> v2::InferParameter {
    v2::InferParameter {
        parameter_choice: Some(v2::infer_parameter::ParameterChoice::Int64Param(n)),
    }
}

pub fn param_bool(b: bool) -> v2::InferParameter {
    v2::InferParameter {
        parameter_choice: Some(v2::infer_parameter::ParameterChoice::BoolParam(b)),
    }
}

pub fn raw(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn input(
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
) -> v2::model_infer_request::InferInputTensor {
    v2::model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        ..Default::default()
    }
}

/// A request as tritonclient sends it: raw FP32 INPUT `[1, k, I]`, and the
/// sequence parameters when `seq` is given (both flags always sent).
pub fn seq_request(seq: Option<(i64, bool, bool)>, rows: &[f32]) -> v2::ModelInferRequest {
    let k = (rows.len() / I) as i64;
    let mut parameters = BTreeMap::new();
    if let Some((id, start, end)) = seq {
        parameters.insert("sequence_id".to_string(), param_int(id));
        parameters.insert("sequence_start".to_string(), param_bool(start));
        parameters.insert("sequence_end".to_string(), param_bool(end));
    }
    v2::ModelInferRequest {
        model_name: "m".into(),
        id: "r".into(),
        parameters,
        inputs: vec![input("INPUT", "FP32", vec![1, k, I as i64])],
        raw_input_contents: vec![raw(rows).into()],
        ..Default::default()
    }
}

/// The raw output named `name` of a response.
pub fn output(r: &v2::ModelInferResponse, name: &str) -> Vec<f32> {
    let i = r
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name} in {:?}", r.outputs));
    floats(&r.raw_output_contents[i])
}
