//! Datasets: sequences and their targets, the checks a dataset must pass
//! before training, padded mini-batches, and length-bucketed shuffling.

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;

use crate::model::bptt::{Batch, Target};
use crate::model::config::{ModelConfig, Task};
use crate::model::error::ModelError;

/// What one sequence is trained towards.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqTarget {
    /// `len × O` real values, row-major (regression at every step).
    Values(Vec<f32>),
    /// One class label per step (`len` labels).
    Classes(Vec<u32>),
    /// One class label for the whole sequence, at its last step.
    Class(u32),
}

/// One training sequence: `len × I` inputs (row-major) and its target.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub inputs: Vec<f32>,
    pub target: SeqTarget,
    /// Optional per-step loss weights (`len` values ≥ 0); zero = no target at that step.
    /// With [`SeqTarget::Class`] only the last step may be non-zero.
    pub weights: Option<Vec<f32>>,
}

impl Sequence {
    pub fn len(&self, input_size: usize) -> usize {
        self.inputs.len() / input_size.max(1)
    }
}

/// Largest sequence length accepted by default (bounds memory per batch).
pub const DEFAULT_MAX_SEQ_LEN: usize = 100_000;

/// Checks a dataset against a model config, naming the sequence and field of
/// the first problem.
pub fn validate_dataset(
    data: &[Sequence],
    cfg: &ModelConfig,
    max_len: usize,
) -> Result<(), ModelError> {
    if data.is_empty() {
        return Err(ModelError::Input("the dataset is empty".into()));
    }
    let (i, o) = (cfg.input_size, cfg.output_dim());
    for (k, s) in data.iter().enumerate() {
        let bad = |m: String| Err(ModelError::Input(format!("sequence {k}: {m}")));
        if s.inputs.is_empty() || s.inputs.len() % i != 0 {
            return bad(format!(
                "inputs has {} values, not a positive multiple of input_size {i}",
                s.inputs.len()
            ));
        }
        let len = s.inputs.len() / i;
        if len > max_len {
            return bad(format!("length {len} is over the limit {max_len}"));
        }
        if let Some(p) = s.inputs.iter().position(|v| !v.is_finite()) {
            return bad(format!(
                "inputs[{p}] (step {}, feature {}) is not finite",
                p / i,
                p % i
            ));
        }
        match (&s.target, cfg.task) {
            (SeqTarget::Values(v), Task::Regression) => {
                if v.len() != len * o {
                    return bad(format!(
                        "targets has {} values, expected length {len} × output {o} = {}",
                        v.len(),
                        len * o
                    ));
                }
                if let Some(p) = v.iter().position(|v| !v.is_finite()) {
                    return bad(format!("targets[{p}] is not finite"));
                }
            }
            (SeqTarget::Classes(l), Task::ClassifyPerStep) => {
                if l.len() != len {
                    return bad(format!("labels has {} entries for {len} steps", l.len()));
                }
                if let Some(p) = l.iter().position(|&c| c as usize >= o) {
                    return bad(format!("labels[{p}] = {} is out of range 0..{o}", l[p]));
                }
            }
            (SeqTarget::Class(c), Task::ClassifyLast) => {
                if *c as usize >= o {
                    return bad(format!("label {c} is out of range 0..{o}"));
                }
            }
            (t, task) => {
                let kind = match t {
                    SeqTarget::Values(_) => "real targets",
                    SeqTarget::Classes(_) => "per-step labels",
                    SeqTarget::Class(_) => "one label",
                };
                return bad(format!("has {kind} but the model's task is {task:?}"));
            }
        }
        if let Some(w) = &s.weights {
            if w.len() != len {
                return bad(format!("weights has {} entries for {len} steps", w.len()));
            }
            if let Some(p) = w.iter().position(|v| !v.is_finite() || *v < 0.0) {
                return bad(format!("weights[{p}] = {} must be finite and ≥ 0", w[p]));
            }
            // One label is scored at the last step only: a weight before it
            // would score a step that has no label.
            if matches!(s.target, SeqTarget::Class(_)) {
                if let Some(p) = w[..len - 1].iter().position(|v| *v != 0.0) {
                    return bad(format!(
                        "weights[{p}] = {} is before the last step ({}): a sequence with one label \
                         (TASK_CLASSIFY_LAST) is scored at its last step only, so its weights \
                         must be 0 at every earlier step",
                        w[p],
                        len - 1
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Builds a padded batch from sequences (inputs zero-padded to the longest).
/// A one-label sequence is weighted at its last step only (its own weight
/// there, 1 without weights): the other steps have no label (the label
/// tensor holds 0 there), and [`validate_dataset`] refuses weights on them.
pub fn make_batch(
    seqs: &[&Sequence],
    input_size: usize,
    output_dim: usize,
    dtype: DType,
    device: &Device,
) -> Result<Batch, ModelError> {
    let lengths: Vec<usize> = seqs.iter().map(|s| s.len(input_size)).collect();
    let t_max = lengths.iter().copied().max().unwrap_or(0);
    let b = seqs.len();
    let mut xs = vec![0f32; b * t_max * input_size];
    let mut w = vec![0f32; b * t_max];
    for (r, s) in seqs.iter().enumerate() {
        let off = r * t_max * input_size;
        xs[off..off + s.inputs.len()].copy_from_slice(&s.inputs);
        let len = lengths[r];
        for t in 0..len {
            w[r * t_max + t] = match (&s.weights, &s.target) {
                (_, SeqTarget::Class(_)) if t + 1 < len => 0.0,
                (Some(ws), _) => ws[t],
                (None, _) => 1.0,
            };
        }
    }
    let target = match seqs.first().map(|s| &s.target) {
        Some(SeqTarget::Values(_)) => {
            let mut y = vec![0f32; b * t_max * output_dim];
            for (r, s) in seqs.iter().enumerate() {
                if let SeqTarget::Values(v) = &s.target {
                    let off = r * t_max * output_dim;
                    y[off..off + v.len()].copy_from_slice(v);
                }
            }
            Target::Regression(
                Tensor::from_vec(y, (b, t_max, output_dim), device)?.to_dtype(dtype)?,
            )
        }
        _ => {
            let mut l = vec![0u32; b * t_max];
            for (r, s) in seqs.iter().enumerate() {
                match &s.target {
                    SeqTarget::Classes(c) => l[r * t_max..r * t_max + c.len()].copy_from_slice(c),
                    SeqTarget::Class(c) => l[r * t_max + lengths[r] - 1] = *c,
                    SeqTarget::Values(_) => {}
                }
            }
            Target::Classes(Tensor::from_vec(l, (b, t_max), device)?)
        }
    };
    Ok(Batch {
        xs: Tensor::from_vec(xs, (b, t_max, input_size), device)?.to_dtype(dtype)?,
        lengths,
        target,
        weights: Tensor::from_vec(w, (b, t_max), device)?.to_dtype(dtype)?,
    })
}

/// How many batches are grouped, sorted by length and cut, so batches hold
/// sequences of similar length (less padding) while the order stays random.
const BUCKET_BATCHES: usize = 50;

pub(super) fn bucketed_batches(
    idx: &[usize],
    lens: &[usize],
    batch_size: usize,
    rng: &mut rand::rngs::StdRng,
) -> Vec<Vec<usize>> {
    let mut idx = idx.to_vec();
    idx.shuffle(rng);
    let mut batches = Vec::new();
    for chunk in idx.chunks(batch_size * BUCKET_BATCHES) {
        let mut chunk = chunk.to_vec();
        chunk.sort_by_key(|&i| lens[i]);
        batches.extend(chunk.chunks(batch_size).map(|c| c.to_vec()));
    }
    batches.shuffle(rng);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bptt::loss_and_grad;

    fn one_label(weights: Option<Vec<f32>>) -> Sequence {
        Sequence {
            inputs: vec![0.1, -0.2, 0.3],
            target: SeqTarget::Class(2),
            weights,
        }
    }

    /// A one-label sequence has no label before its last step (the label
    /// tensor holds 0 there): whatever weights `make_batch` is handed, the loss
    /// must not move with class 0's logit at those steps.
    #[test]
    fn a_one_label_loss_ignores_the_logits_of_unlabeled_steps() {
        let seqs = [
            one_label(None),
            one_label(Some(vec![0.0, 0.0, 1.0])),
            one_label(Some(vec![1.0, 1.0, 1.0])),
        ];
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let b = make_batch(&refs, 1, 3, DType::F64, &Device::Cpu).unwrap();
        // Logits [B = 3, T = 3, O = 3]: class 0's at steps 0 and 1 is `v`;
        // the last step's are (0, 0, 0.5) for every row.
        let logits = |v: f64| {
            let mut y = vec![0f64; 27];
            for r in 0..3 {
                y[(r * 3) * 3] = v;
                y[(r * 3 + 1) * 3] = v;
                y[(r * 3 + 2) * 3 + 2] = 0.5;
            }
            Tensor::from_vec(y, (3, 3, 3), &Device::Cpu).unwrap()
        };
        let (low, _) = loss_and_grad(&logits(-5.0), &b.target, &b.weights).unwrap();
        let (high, _) = loss_and_grad(&logits(5.0), &b.target, &b.weights).unwrap();
        assert_eq!(low, high, "the loss depends on unlabeled steps' logits");
        // And it is class 2's cross-entropy at the last step.
        let want = (2.0 + 0.5f64.exp()).ln() - 0.5;
        assert!((low - want).abs() < 1e-12, "{low} vs {want}");
    }
}
