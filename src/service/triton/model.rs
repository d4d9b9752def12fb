//! How a served GRU looks through Triton's eyes: its tensors, its metadata
//! and a `ModelConfig` with `sequence_batching`, so perf_analyzer and
//! tritonclient see a stateful model. Names and version strings as Triton
//! spells them.

use crate::engine::ServedModel;

use super::error::{Kind, TritonError};
use super::pb;

/// Inputs: `[batch, T, input]` (`[1, k, input]` within a sequence).
pub const INPUT: &str = "INPUT";
/// Optional, stateless only: each batch element's length, `[batch]` or `[batch, 1]`.
pub const SEQUENCE_LENGTH: &str = "SEQUENCE_LENGTH";
/// Optional: h to start from, `[batch, layers, hidden]`; with START only in a sequence.
pub const STATE_IN: &str = "STATE_IN";
/// Outputs: `[batch, T, output]`.
pub const OUTPUT: &str = "OUTPUT";
/// h after the last step, `[batch, layers, hidden]`.
pub const STATE_OUT: &str = "STATE_OUT";

/// Every output, in response order.
pub const OUTPUTS: [&str; 2] = [OUTPUT, STATE_OUT];

/// What the config reports beyond the model: limits of this server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_batch_size`: sequences one stateless request may carry.
    pub max_batch_size: usize,
    /// `max_candidate_sequences`: live sessions.
    pub max_sequences: usize,
    /// `max_sequence_idle_microseconds`: the session TTL.
    pub idle_us: u64,
}

/// One tensor of the metadata: name, datatype and full shape (batch first).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

pub struct Metadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

/// The backend name reported as platform and backend.
pub const BACKEND: &str = "gru";

/// `""` = the latest version; otherwise an integer > 0.
pub fn parse_version(s: &str) -> Result<Option<u64>, TritonError> {
    if s.is_empty() {
        return Ok(None);
    }
    match s.parse::<u64>() {
        Ok(v) if v > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(v)),
        _ => Err(TritonError::invalid(format!(
            "failed to get model version from specified version string '{}' (version should be an integral value > 0)",
            crate::engine::ids::clip(s)
        ))),
    }
}

/// Triton's texts for a model or version that is not served.
pub fn not_found(name: &str, version: Option<u64>) -> TritonError {
    let name = crate::engine::ids::clip(name);
    let message = match version {
        None => format!("Request for unknown model: '{name}' is not found"),
        Some(v) => format!("Request for unknown model: '{name}' version {v} is not found"),
    };
    TritonError::new(Kind::NotFound, message)
}

/// Inputs and outputs with the batch dimension first (`-1`).
fn tensors(m: &ServedModel) -> (Vec<TensorMeta>, Vec<TensorMeta>) {
    let c = m.model.config();
    let (i, o) = (c.input_size as i64, c.output_dim() as i64);
    let (l, h) = (c.num_layers as i64, c.hidden_size as i64);
    let t = |name, datatype, shape: Vec<i64>| TensorMeta {
        name,
        datatype,
        shape,
    };
    (
        vec![
            t(INPUT, "FP32", vec![-1, -1, i]),
            t(SEQUENCE_LENGTH, "INT32", vec![-1, 1]),
            t(STATE_IN, "FP32", vec![-1, l, h]),
        ],
        vec![
            t(OUTPUT, "FP32", vec![-1, -1, o]),
            t(STATE_OUT, "FP32", vec![-1, l, h]),
        ],
    )
}

pub fn metadata(m: &ServedModel, versions: &[u64]) -> Metadata {
    let (inputs, outputs) = tensors(m);
    Metadata {
        name: m.name.clone(),
        versions: versions.iter().map(u64::to_string).collect(),
        platform: BACKEND,
        inputs,
        outputs,
    }
}

fn data_type(datatype: &str) -> i32 {
    let t = match datatype {
        "INT32" => pb::DataType::TypeInt32,
        _ => pb::DataType::TypeFp32,
    };
    t as i32
}

/// The Triton `ModelConfig` of a served version.
pub fn config(m: &ServedModel, limits: Limits) -> pb::ModelConfig {
    let (inputs, outputs) = tensors(m);
    // The config's dims leave out the batch dimension (max_batch_size > 0).
    let dims = |t: &TensorMeta| t.shape[1..].to_vec();
    pb::ModelConfig {
        name: m.name.clone(),
        backend: BACKEND.into(),
        max_batch_size: limits.max_batch_size.min(i32::MAX as usize) as i32,
        input: inputs
            .iter()
            .map(|t| pb::ModelInput {
                name: t.name.into(),
                data_type: data_type(t.datatype),
                dims: dims(t),
                optional: t.name != INPUT,
                ..Default::default()
            })
            .collect(),
        output: outputs
            .iter()
            .map(|t| pb::ModelOutput {
                name: t.name.into(),
                data_type: data_type(t.datatype),
                dims: dims(t),
                ..Default::default()
            })
            .collect(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(pb::model_version_policy::PolicyChoice::All(
                pb::model_version_policy::All {},
            )),
        }),
        model_transaction_policy: Some(pb::ModelTransactionPolicy { decoupled: false }),
        scheduling_choice: Some(pb::model_config::SchedulingChoice::SequenceBatching(
            pb::ModelSequenceBatching {
                max_sequence_idle_microseconds: limits.idle_us,
                strategy_choice: Some(pb::model_sequence_batching::StrategyChoice::Oldest(
                    pb::model_sequence_batching::StrategyOldest {
                        max_candidate_sequences: limits.max_sequences.min(i32::MAX as usize) as i32,
                        max_queue_delay_microseconds: 0,
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The config in protobuf's JSON form (what Triton's HTTP `/config` answers):
/// the fields [`config`] sets, 64-bit integers as strings, enums by name.
pub fn config_json(m: &ServedModel, limits: Limits) -> serde_json::Value {
    use serde_json::json;
    let (inputs, outputs) = tensors(m);
    let ty = |t: &TensorMeta| format!("TYPE_{}", t.datatype);
    let dims = |t: &TensorMeta| {
        t.shape[1..]
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
    };
    json!({
        "name": m.name,
        "platform": "",
        "backend": BACKEND,
        "version_policy": {"all": {}},
        "max_batch_size": limits.max_batch_size.min(i32::MAX as usize),
        "input": inputs.iter().map(|t| json!({
            "name": t.name, "data_type": ty(t), "dims": dims(t), "optional": t.name != INPUT,
        })).collect::<Vec<_>>(),
        "output": outputs.iter().map(|t| json!({
            "name": t.name, "data_type": ty(t), "dims": dims(t),
        })).collect::<Vec<_>>(),
        "sequence_batching": {
            "max_sequence_idle_microseconds": limits.idle_us.to_string(),
            "oldest": {
                "max_candidate_sequences": limits.max_sequences.min(i32::MAX as usize),
                "max_queue_delay_microseconds": "0",
            },
        },
        "model_transaction_policy": {"decoupled": false},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_strings_are_empty_or_positive_integers() {
        assert_eq!(parse_version("").unwrap(), None);
        assert_eq!(parse_version("3").unwrap(), Some(3));
        for bad in ["0", "-1", "x", "1.0", "+1", " 1"] {
            let e = parse_version(bad).unwrap_err();
            assert!(e.message.contains("integral value > 0"), "{bad}: {e}");
        }
    }
}
