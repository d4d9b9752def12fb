//! Stateless Predict under a memory bound. Sequences of very different
//! lengths are never padded to the longest one: they are sorted by length,
//! grouped so that a group's lengths are within 2× of each other, and each
//! group runs in windows of time steps, h carried from window to window, so
//! one forward call never holds more than [`super::rows::BATCH_BYTES`] of padded
//! activations whatever the request's shape.

use std::cmp::Reverse;

use super::rows::{bytes_per_padded_step, forward_rows, padded_steps_budget, RowIn, RowsOut};
use super::{EngineError, PredictSeq};
use crate::model::{GruModel, ModelConfig};

/// Most rows in one forward call of Predict (the worker has `max_batch`).
const MAX_GROUP_ROWS: usize = 1024;

/// What a Predict of these sequences holds at its peak: the inputs and
/// outputs of every step, initial and final states, and one forward call's
/// working set. Checked against `--max-predict-bytes` before anything runs.
pub fn predict_bytes(c: &ModelConfig, seqs: &[PredictSeq]) -> u64 {
    let steps: u64 = seqs.iter().map(|s| s.len as u64).sum();
    let io = steps * 4 * (c.input_size + c.output_dim()) as u64;
    let states = seqs.len() as u64 * 2 * 4 * (c.num_layers * c.hidden_size) as u64;
    let longest = seqs.iter().map(|s| s.len).max().unwrap_or(0);
    let window = padded_steps_budget(c).min(longest.max(1) * seqs.len().max(1));
    io + states + (window * bytes_per_padded_step(c)) as u64
}

/// Runs every sequence from its initial state (zeros when none): per
/// sequence its outputs [len × O] and final h [layers × hidden].
pub fn run(model: &GruModel, seqs: &[PredictSeq]) -> Result<RowsOut, EngineError> {
    run_budgeted(model, seqs, padded_steps_budget(model.config()))
}

/// [`run`] with at most `budget` padded steps per forward call.
fn run_budgeted(
    model: &GruModel,
    seqs: &[PredictSeq],
    budget: usize,
) -> Result<RowsOut, EngineError> {
    let c = model.config();
    let (i, o) = (c.input_size, c.output_dim());
    let size = c.num_layers * c.hidden_size;
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&r| Reverse(seqs[r].len));
    let mut outputs: Vec<Vec<f32>> = seqs.iter().map(|s| Vec::with_capacity(s.len * o)).collect();
    let mut states: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| match &s.initial {
            Some(state) => state.values.clone(),
            None => vec![0.0; size],
        })
        .collect();
    let mut g = 0;
    while g < order.len() {
        let longest = seqs[order[g]].len;
        let mut end = g + 1;
        while end < order.len() && end - g < MAX_GROUP_ROWS && seqs[order[end]].len * 2 > longest {
            end += 1;
        }
        let group = &order[g..end];
        let window = (budget / group.len()).max(1);
        let mut t0 = 0;
        while t0 < longest {
            // Sorted longest first: the rows still running are a prefix.
            let active = group.iter().take_while(|&&r| seqs[r].len > t0).count();
            let rows: Vec<RowIn<'_>> = group[..active]
                .iter()
                .map(|&r| {
                    let len = (seqs[r].len - t0).min(window);
                    RowIn {
                        inputs: &seqs[r].inputs[t0 * i..(t0 + len) * i],
                        len,
                        h: Some(&states[r]),
                    }
                })
                .collect();
            let (outs, hs) = forward_rows(model, &rows)?;
            drop(rows);
            for ((&r, out), h) in group[..active].iter().zip(outs).zip(hs) {
                outputs[r].extend_from_slice(&out);
                states[r] = h;
            }
            t0 += window;
        }
        g = end;
    }
    Ok((outputs, states))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::HiddenState;
    use crate::model::ModelConfig;

    fn seq(len: usize, i: usize, seed: usize) -> PredictSeq {
        PredictSeq {
            inputs: (0..len * i)
                .map(|k| (((k + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0)
                .collect(),
            len,
            initial: None,
        }
    }

    /// Windows and groups must not change a single output: the same
    /// sequences through one padded forward give the same numbers.
    #[test]
    fn windows_and_groups_give_the_outputs_of_one_padded_forward() {
        let c = ModelConfig::new(3, 8, 2).with_head(2);
        let model = GruModel::init(c.clone(), 7, &candle_core::Device::Cpu).unwrap();
        let mut seqs: Vec<PredictSeq> = [1, 5, 300, 2, 40, 41, 7, 1]
            .iter()
            .enumerate()
            .map(|(n, &len)| seq(len, 3, n))
            .collect();
        seqs[2].initial = Some(HiddenState {
            layers: 2,
            hidden: 8,
            values: (0..16).map(|k| k as f32 / 16.0).collect(),
        });
        // A budget of 16 padded steps forces many groups and windows.
        let (want_o, want_h) = forward_rows(
            &model,
            &seqs
                .iter()
                .map(|s| RowIn {
                    inputs: &s.inputs,
                    len: s.len,
                    h: s.initial.as_ref().map(|state| state.values.as_slice()),
                })
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let (got_o, got_h) = run_budgeted(&model, &seqs, 16).unwrap();
        for (n, (a, b)) in got_o
            .iter()
            .zip(&want_o)
            .chain(got_h.iter().zip(&want_h))
            .enumerate()
        {
            assert_eq!(a.len(), b.len(), "row {n}: lengths");
            for (k, (x, y)) in a.iter().zip(b).enumerate() {
                let d = (x - y).abs();
                assert!(d <= 1e-6, "row {n}[{k}]: {x} vs {y}");
            }
        }
    }
}
