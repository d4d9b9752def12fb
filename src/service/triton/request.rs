//! A ModelInfer request as the adapter reads it, for both transports: the
//! sequence parameters, the input tensors checked against the protocol's
//! names and types, the outputs asked for, and Triton's texts for the
//! refusals.

use std::time::Duration;

use super::error::TritonError;
use super::model::{INPUT, OUTPUTS, SEQUENCE_LENGTH, STATE_IN};
use super::sequences::{SeqId, MAX_STRING_ID_LEN};
use super::tensor::{elements, Data, InTensor, Name, OutTensor, Param};

/// A request as either transport decoded it.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub model: String,
    /// "" = latest.
    pub version: String,
    /// Echoed in the response.
    pub id: String,
    pub params: Params,
    pub inputs: Vec<InTensor>,
    /// The outputs asked for, by name; empty = all.
    pub outputs: Vec<Name>,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model: String,
    pub version: u64,
    pub id: String,
    pub outputs: Vec<OutTensor>,
}

/// A request's parameters, as the transport listed them (names are unique:
/// both a protobuf map and a JSON object hold each once). A handful per
/// request: a scan beats hashing them into a map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(pub Vec<(Name, Param)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Sets `name`, replacing an earlier value (a protobuf map's last entry
    /// wins); `None` removes it.
    pub fn set(&mut self, name: Name, value: Option<Param>) {
        let at = self.0.iter().position(|(k, _)| *k == name);
        match (at, value) {
            (Some(i), Some(v)) => self.0[i].1 = v,
            (Some(i), None) => {
                self.0.remove(i);
            }
            (None, Some(v)) => self.0.push((name, v)),
            (None, None) => {}
        }
    }
}

impl<K: Into<Name>> FromIterator<(K, Param)> for Params {
    fn from_iter<I: IntoIterator<Item = (K, Param)>>(iter: I) -> Self {
        Params(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

/// The sequence parameters of a request.
pub(super) struct SeqParams {
    pub(super) id: Option<SeqId>,
    pub(super) start: bool,
    pub(super) end: bool,
    /// `sequence_step`: the step index the request starts at (exactly-once).
    pub(super) step: Option<u64>,
}

pub(super) fn flag(params: &Params, name: &str) -> Result<bool, TritonError> {
    match params.get(name) {
        None => Ok(false),
        Some(Param::Bool(b)) => Ok(*b),
        Some(other) => Err(TritonError::invalid(format!(
            "parameter '{name}' must be a bool, got {other:?}"
        ))),
    }
}

pub(super) fn seq_params(params: &Params) -> Result<SeqParams, TritonError> {
    // Triton accepts int64 and string ids; uint64 too here (ids ≥ 2^63).
    let id = match params.get("sequence_id") {
        None | Some(Param::Int(0)) | Some(Param::UInt(0)) => None,
        Some(Param::Str(s)) if s.is_empty() => None,
        Some(Param::Int(n)) if *n > 0 => Some(SeqId::Int(*n as u64)),
        Some(Param::UInt(n)) => Some(SeqId::Int(*n)),
        Some(Param::Str(s)) if s.chars().count() <= MAX_STRING_ID_LEN => {
            Some(SeqId::Str(s.clone()))
        }
        Some(Param::Str(s)) => {
            return Err(TritonError::invalid(format!(
                "sequence_id '{}' is {} characters; string ids are at most {MAX_STRING_ID_LEN}",
                crate::engine::ids::clip(s),
                s.chars().count()
            )))
        }
        Some(other) => {
            return Err(TritonError::invalid(format!(
                "sequence_id must be a positive integer or a string, got {other:?}"
            )))
        }
    };
    let step = match params.get("sequence_step") {
        None => None,
        Some(Param::Int(n)) if *n >= 0 => Some(*n as u64),
        Some(Param::UInt(n)) => Some(*n),
        Some(other) => {
            return Err(TritonError::invalid(format!(
                "sequence_step must be an integer ≥ 0, got {other:?}"
            )))
        }
    };
    let p = SeqParams {
        id,
        start: flag(params, "sequence_start")?,
        end: flag(params, "sequence_end")?,
        step,
    };
    if p.id.is_none() && (p.start || p.end || p.step.is_some()) {
        return Err(TritonError::invalid(
            "sequence_start, sequence_end and sequence_step need a non-zero sequence_id",
        ));
    }
    Ok(p)
}

/// A request's inputs, checked against the protocol's names and types.
pub(super) struct Inputs {
    pub(super) input: (Vec<i64>, Vec<f32>),
    pub(super) lengths: Option<(Vec<i64>, Vec<i64>)>,
    pub(super) state: Option<(Vec<i64>, Vec<f32>)>,
}

pub(super) fn collect_inputs(model: &str, tensors: Vec<InTensor>) -> Result<Inputs, TritonError> {
    let (mut input, mut lengths, mut state) = (None, None, None);
    for t in tensors {
        let (slot_taken, want) = match &*t.name {
            INPUT => (input.is_some(), "FP32"),
            STATE_IN => (state.is_some(), "FP32"),
            SEQUENCE_LENGTH => (lengths.is_some(), "INT32"),
            other => {
                return Err(TritonError::invalid(format!(
                    "unexpected inference input '{}' for model '{model}'",
                    crate::engine::ids::clip(other)
                )))
            }
        };
        if slot_taken {
            return Err(TritonError::invalid(format!(
                "input '{}' is given twice",
                t.name
            )));
        }
        let type_ok = t.datatype == want || (want == "INT32" && t.datatype == "INT64");
        if !type_ok {
            return Err(TritonError::invalid(format!(
                "inference input '{}' data-type is '{}', but model '{model}' expects '{want}'",
                t.name,
                crate::engine::ids::clip(&t.datatype)
            )));
        }
        let n = elements(&t.shape).ok_or_else(|| super::tensor::bad_shape(&t.name, &t.shape))?;
        if t.data.count() != Some(n) {
            return Err(TritonError::invalid(format!(
                "input '{}': shape {:?} holds {n} values, got {}",
                t.name,
                t.shape,
                t.data.count().unwrap_or(0)
            )));
        }
        match (&*t.name, t.data) {
            (INPUT, Data::F32(v)) => input = Some((t.shape, v)),
            (STATE_IN, Data::F32(v)) => state = Some((t.shape, v)),
            (_, Data::Int(v)) => lengths = Some((t.shape, v)),
            _ => {
                return Err(TritonError::invalid(format!(
                    "input '{}': values do not match its datatype {}",
                    t.name, t.datatype
                )))
            }
        }
    }
    let input = input.ok_or_else(|| {
        TritonError::invalid(format!("input '{INPUT}' is required for model '{model}'"))
    })?;
    Ok(Inputs {
        input,
        lengths,
        state,
    })
}

/// Which of [`OUTPUTS`] the request wants.
pub(super) fn wanted(model: &str, asked: &[Name]) -> Result<[bool; 2], TritonError> {
    if asked.is_empty() {
        return Ok([true, true]);
    }
    let mut w = [false, false];
    for name in asked {
        match OUTPUTS.iter().position(|o| *o == &**name) {
            Some(i) => w[i] = true,
            None => {
                return Err(TritonError::invalid(format!(
                    "unexpected inference output '{}' for model '{model}'",
                    crate::engine::ids::clip(name)
                )))
            }
        }
    }
    Ok(w)
}

pub(super) fn shape_error(name: &str, model: &str, expected: &[i64], got: &[i64]) -> TritonError {
    let fmt = |s: &[i64]| {
        let v: Vec<String> = s.iter().map(i64::to_string).collect();
        format!("[{}]", v.join(","))
    };
    TritonError::invalid(format!(
        "unexpected shape for input '{name}' for model '{model}'. Expected {}, got {}",
        fmt(expected),
        fmt(got)
    ))
}

/// Triton's text for a request of a sequence it does not hold; ours adds
/// why when the sequence expired (Triton resets silently).
pub(super) fn start_required(
    id: &SeqId,
    model: &str,
    expired_after: Option<Duration>,
) -> TritonError {
    let mut m = format!(
        "inference request for sequence {id} to model '{model}' must specify the START flag on the first request of the sequence"
    );
    if let Some(ttl) = expired_after {
        m.push_str(&format!(
            ": the sequence expired after {} s without a request (max_sequence_idle_microseconds); its state is gone, start it again",
            ttl.as_secs()
        ));
    }
    TritonError::invalid(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: &[(&str, Param)]) -> Params {
        p.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn sequence_ids_are_integers_or_bounded_strings_and_flags_need_one() {
        let p = seq_params(&params(&[
            ("sequence_id", Param::Int(42)),
            ("sequence_start", Param::Bool(true)),
            ("sequence_end", Param::Bool(false)),
            ("priority", Param::UInt(0)),
        ]))
        .unwrap();
        assert_eq!((p.id, p.start, p.end), (Some(SeqId::Int(42)), true, false));
        let u = seq_params(&params(&[("sequence_id", Param::UInt(u64::MAX))])).unwrap();
        assert_eq!(u.id, Some(SeqId::Int(u64::MAX)));
        let s = seq_params(&params(&[("sequence_id", Param::Str("a".repeat(128)))])).unwrap();
        assert!(matches!(s.id, Some(SeqId::Str(_))));
        for bad in [
            params(&[("sequence_id", Param::Str("a".repeat(129)))]),
            params(&[("sequence_id", Param::Int(-1))]),
            params(&[("sequence_id", Param::Double(1.0))]),
            params(&[("sequence_start", Param::Bool(true))]),
            params(&[
                ("sequence_id", Param::Int(0)),
                ("sequence_end", Param::Bool(true)),
            ]),
            params(&[
                ("sequence_id", Param::Int(1)),
                ("sequence_start", Param::Int(1)),
            ]),
        ] {
            assert!(seq_params(&bad).is_err(), "{bad:?}");
        }
        assert!(
            seq_params(&params(&[("sequence_id", Param::Str(String::new()))]))
                .unwrap()
                .id
                .is_none()
        );
    }

    #[test]
    fn outputs_are_all_by_default_and_unknown_names_are_refused() {
        assert_eq!(wanted("m", &[]).unwrap(), [true, true]);
        assert_eq!(wanted("m", &["STATE_OUT".into()]).unwrap(), [false, true]);
        let e = wanted("m", &["NOPE".into()]).unwrap_err();
        assert!(
            e.message.contains("unexpected inference output 'NOPE'"),
            "{e}"
        );
    }
}
