//! One padded forward over rows of different lengths, and the memory budget
//! every such call keeps to. Shared by the step worker (`batcher`) and
//! stateless Predict (`predict`), so neither depends on the other.

use candle_core::{DType, Tensor};

use super::EngineError;
use crate::model::{GruModel, ModelConfig};

/// Padded activations one forward call may hold (Predict and the step
/// worker alike). 64 MiB keeps 256 sessions × k = 32 at H = 256 in one batch.
pub const BATCH_BYTES: usize = 64 << 20;

/// Bytes one padded step of one row costs a forward call: its input and
/// output rows and, per layer, the gate pre-activations (3H), the layer's
/// output (H) and workspace (2H).
pub fn bytes_per_padded_step(c: &ModelConfig) -> usize {
    4 * (c.input_size + c.output_dim() + c.num_layers * 6 * c.hidden_size)
}

/// Padded steps one forward call may hold for this model (at least 1).
pub fn padded_steps_budget(c: &ModelConfig) -> usize {
    (BATCH_BYTES / bytes_per_padded_step(c).max(1)).max(1)
}

/// Per-row outputs [len × O] and final states [layers × hidden].
pub type RowsOut = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// One sequence to run: `len` rows of inputs and an optional initial h.
pub struct RowIn<'a> {
    pub inputs: &'a [f32],
    pub len: usize,
    pub h: Option<&'a [f32]>,
}

/// Gathers rows into one padded batch, runs one forward, splits the outputs
/// and final states per row. Shared by the step worker and Predict.
pub fn forward_rows(model: &GruModel, rows: &[RowIn<'_>]) -> Result<RowsOut, EngineError> {
    let c = model.config();
    let (i, h, l_n, o) = (c.input_size, c.hidden_size, c.num_layers, c.output_dim());
    let b = rows.len();
    let kmax = rows.iter().map(|r| r.len).max().unwrap_or(1);
    let mut xs = vec![0f32; b * kmax * i];
    let mut state = vec![0f32; l_n * b * h];
    for (r, row) in rows.iter().enumerate() {
        xs[r * kmax * i..r * kmax * i + row.inputs.len()].copy_from_slice(row.inputs);
        if let Some(init) = row.h {
            for layer in 0..l_n {
                state[(layer * b + r) * h..(layer * b + r + 1) * h]
                    .copy_from_slice(&init[layer * h..(layer + 1) * h]);
            }
        }
    }
    let lengths: Vec<usize> = rows.iter().map(|r| r.len).collect();
    let Padded { ys, hn, .. } = forward_padded(model, xs, state, &lengths)?;
    let outs = rows
        .iter()
        .enumerate()
        .map(|(r, row)| ys[r * kmax * o..r * kmax * o + row.len * o].to_vec())
        .collect();
    let states = (0..b)
        .map(|r| {
            let mut s = Vec::with_capacity(l_n * h);
            for layer in 0..l_n {
                s.extend_from_slice(&hn[(layer * b + r) * h..(layer * b + r + 1) * h]);
            }
            s
        })
        .collect();
    Ok((outs, states))
}

/// One padded forward's results, flat: row r's outputs are
/// `ys[r·kmax·O ..][.. len_r·O]`, its final h of layer l is `hn[(l·B + r)·H ..][.. H]`.
pub struct Padded {
    pub ys: Vec<f32>,
    pub hn: Vec<f32>,
    pub kmax: usize,
}

/// One forward over B rows already gathered: `xs` [B × kmax × I] (padded,
/// kmax = the longest length) and `state` [L × B × H]. When every row is one
/// step long it runs the model's single-step path, which skips the padded
/// path's sort and transposes (µs per call at small B, BENCHMARKS.md).
pub fn forward_padded(
    model: &GruModel,
    xs: Vec<f32>,
    state: Vec<f32>,
    lengths: &[usize],
) -> Result<Padded, EngineError> {
    let c = model.config();
    let (i, h, l_n) = (c.input_size, c.hidden_size, c.num_layers);
    let b = lengths.len();
    let kmax = lengths.iter().copied().max().unwrap_or(1);
    let dev = model.device();
    let dt = model.dtype();
    let st = Tensor::from_vec(state, (l_n, b, h), dev)?.to_dtype(dt)?;
    let (ys, hn) = if kmax == 1 {
        let x = Tensor::from_vec(xs, (b, i), dev)?.to_dtype(dt)?;
        model.step(&x, &st)?
    } else {
        let xs = Tensor::from_vec(xs, (b, kmax, i), dev)?.to_dtype(dt)?;
        model.forward(&xs, lengths, Some(&st))?
    };
    Ok(Padded {
        ys: to_f32_vec(&ys)?,
        hn: to_f32_vec(&hn)?,
        kmax,
    })
}

fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(crate::model::ModelError::from)?)
}
