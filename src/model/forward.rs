//! The time loop of one layer over a padded, length-sorted batch, in two
//! implementations with the same contract:
//!
//! - [`Backend::Fused`] on the CPU: the fused kernels of `cpu/` (packed
//!   weights, per-thread buffers, rows split over helper threads;
//!   `cpu/forward.rs`).
//! - [`Backend::Reference`] (and any non-CPU device): plain candle ops. It is
//!   the portable path (CUDA) and the independent check of the fused one.
//!
//! Contract: `xs` is time-major [T, B, I], rows sorted by sequence length
//! (longest first) so that at step t the live rows are the prefix
//! `0..batch_sizes[t]`. Padded rows of `ys` are zero; each row's `h_last` is
//! its state after its own last step. The input projections are computed for
//! many steps per matmul (all T in the reference; L2-sized chunks of steps in
//! the fused path).

use candle_core::{Device, Tensor};

use super::config::ResetMode;
use super::cpu::forward::forward_cpu;
use super::error::ModelError;
use super::layer::{gate_block, GruLayer, LayerRun, YsLayout};

/// Which implementation of the math runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Fused CPU kernels on the CPU; candle ops elsewhere.
    #[default]
    Fused,
    /// candle ops everywhere (reference for tests, and the CUDA path).
    Reference,
}

pub(crate) fn layer_forward(
    layer: &GruLayer,
    xs: &Tensor,
    batch_sizes: &[usize],
    h0: &Tensor,
    want_cache: bool,
    backend: Backend,
    layout: YsLayout,
) -> Result<LayerRun, ModelError> {
    if backend == Backend::Fused && matches!(xs.device(), Device::Cpu) {
        match xs.dtype() {
            candle_core::DType::F32 => {
                return forward_cpu::<f32>(layer, xs, batch_sizes, h0, want_cache, layout)
            }
            candle_core::DType::F64 => {
                return forward_cpu::<f64>(layer, xs, batch_sizes, h0, want_cache, layout)
            }
            _ => {}
        }
    }
    let mut run = forward_reference(layer, xs, batch_sizes, h0, want_cache)?;
    if layout == YsLayout::BatchMajor {
        run.ys = run.ys.transpose(0, 1)?.contiguous()?;
    }
    Ok(run)
}

// ---------------------------------------------------------------- reference

fn forward_reference(
    layer: &GruLayer,
    xs: &Tensor,
    batch_sizes: &[usize],
    h0: &Tensor,
    want_cache: bool,
) -> Result<LayerRun, ModelError> {
    let (t_len, b_all, i) = xs.dims3()?;
    let h = layer.hidden_size;
    let gi = xs
        .reshape((t_len * b_all, i))?
        .matmul(&layer.w_ih)?
        .broadcast_add(&layer.gi_bias)?
        .reshape((t_len, b_all, 3 * h))?;
    let mut state = h0.clone();
    let mut ys = Vec::with_capacity(t_len);
    let mut caches = Vec::with_capacity(t_len);
    let pad = |t: Tensor, b: usize| -> candle_core::Result<Tensor> {
        if b == b_all {
            return Ok(t);
        }
        let w = t.dim(1)?;
        let z = Tensor::zeros((b_all - b, w), t.dtype(), t.device())?;
        Tensor::cat(&[&t, &z], 0)
    };
    for (t, &b) in batch_sizes.iter().enumerate() {
        if b == 0 {
            ys.push(Tensor::zeros((b_all, h), xs.dtype(), xs.device())?);
            if want_cache {
                caches.push(Tensor::zeros((b_all, 4 * h), xs.dtype(), xs.device())?);
            }
            continue;
        }
        let gi_t = gi.get(t)?.narrow(0, 0, b)?;
        let hb = state.narrow(0, 0, b)?;
        let (r, z, c, g) = cell_reference(layer, &gi_t, &hb)?;
        let hn = (&hb + z.mul(&(&c - &hb)?)?)?;
        ys.push(pad(hn.clone(), b)?);
        if want_cache {
            caches.push(pad(Tensor::cat(&[&r, &z, &c, &g], 1)?, b)?);
        }
        state = if b == b_all {
            hn
        } else {
            Tensor::cat(&[&hn, &state.narrow(0, b, b_all - b)?], 0)?
        };
    }
    Ok(LayerRun {
        ys: Tensor::stack(&ys, 0)?,
        h_last: state,
        cache: if want_cache {
            Some(Tensor::stack(&caches, 0)?)
        } else {
            None
        },
    })
}

/// One cell step with candle ops: returns (r, z, c, g), each [b, H].
pub(crate) fn cell_reference(
    layer: &GruLayer,
    gi: &Tensor,
    h_prev: &Tensor,
) -> Result<(Tensor, Tensor, Tensor, Tensor), ModelError> {
    let hs = layer.hidden_size;
    let sigmoid = candle_nn::ops::sigmoid;
    Ok(match layer.mode {
        ResetMode::AfterMatmul => {
            let gh = h_prev.matmul(&layer.w_hh)?.broadcast_add(&layer.gh_bias)?;
            let r = sigmoid(&(gate_block(gi, 0, hs)? + gate_block(&gh, 0, hs)?)?)?;
            let z = sigmoid(&(gate_block(gi, 1, hs)? + gate_block(&gh, 1, hs)?)?)?;
            let g = gate_block(&gh, 2, hs)?;
            let c = (gate_block(gi, 2, hs)? + r.mul(&g)?)?.tanh()?;
            (r, z, c, g)
        }
        ResetMode::BeforeMatmul => {
            let (w_rz, w_c) = before_weights(layer)?;
            let grz = h_prev.matmul(w_rz)?;
            let r = sigmoid(&(gate_block(gi, 0, hs)? + grz.narrow(1, 0, hs)?)?)?;
            let z = sigmoid(&(gate_block(gi, 1, hs)? + grz.narrow(1, hs, hs)?)?)?;
            let gs = r.mul(h_prev)?.matmul(w_c)?;
            let c = (gate_block(gi, 2, hs)? + gs)?.tanh()?;
            let g = c.zeros_like()?;
            (r, z, c, g)
        }
    })
}

pub(crate) fn before_weights(layer: &GruLayer) -> Result<(&Tensor, &Tensor), ModelError> {
    match (&layer.w_hh_rz, &layer.w_hh_c) {
        (Some(rz), Some(c)) => Ok((rz, c)),
        _ => Err(ModelError::Internal(
            "before_matmul layer without split recurrent weights".into(),
        )),
    }
}
