//! Analytic backpropagation through time, as batched tensor operations.
//!
//! The equations are those of `../shared/GRU-MATH.md` ("BPTT equations"),
//! rewritten for the internal convention (z weights the candidate c):
//!
//! ```text
//! h_t = h + z ⊙ (c − h)                        ε = ∂L/∂h_t (total)
//! δc = ε ⊙ z ⊙ (1 − c²)                        δz = ε ⊙ (c − h) ⊙ z(1 − z)
//! after_matmul  (a_c = gi_c + r ⊙ g, g = h W_hc + b_hc):
//!     δg = δc ⊙ r      δr = δc ⊙ g ⊙ r(1 − r)
//!     ∂L/∂h_{t−1} = ε ⊙ (1 − z) + [δr | δz | δg] · W_hhᵀ
//! before_matmul (a_c = gi_c + (r ⊙ h) U_c):
//!     dS = δc · U_cᵀ   δr = dS ⊙ h ⊙ r(1 − r)
//!     ∂L/∂h_{t−1} = ε ⊙ (1 − z) + dS ⊙ r + [δr | δz] · [U_r | U_z]ᵀ
//! ```
//!
//! The time loop runs only the elementwise chain and the one product that
//! carries ε back to h_{t−1}. The gate gradients of all steps are stacked, so
//! each weight gradient is ONE matmul at the end (cuDNN's strategy):
//! ∂L/∂W_ih = Xᵀ·G_i over all T·B rows, ∂L/∂W_hh = H_prevᵀ·G_h. Padded steps
//! have zero gate gradients, so they add nothing anywhere. No recursion:
//! T = 5000 runs on a default-sized thread.
//!
//! Truncated BPTT with window k: windows (0, k], (k, 2k], …; at the start of
//! each window the incoming state is a constant, so ε is not carried past a
//! window boundary. The gradient is Σ_windows Σ_{t∈window} ∂ℓ_t/∂θ with
//! h_{t0} held constant (GRU-MATH §4), from one forward pass over the batch.

use candle_core::{DType, Device, Tensor, D};

use super::forward::Backend;

use super::config::ResetMode;
use super::error::ModelError;
use super::forward::before_weights;
use super::layer::{GruLayer, LayerParams};
use super::network::{ForwardCache, GruModel, Head};

/// Gradients of every trainable tensor, in the internal layout.
#[derive(Debug, Clone)]
pub struct Gradients {
    pub layers: Vec<LayerParams>,
    pub head: Option<Head>,
    /// ∂L/∂h0 [L, B, H] in the caller's batch order (h0 is not trained; tests use it).
    pub h0: Tensor,
}

impl Gradients {
    /// Every gradient tensor, in a fixed order (layers' w_ih, w_hh, b_ih, b_hh…, head w, b).
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.extend([&l.w_ih, &l.w_hh, &l.b_ih, &l.b_hh]);
        }
        if let Some(h) = &self.head {
            v.extend([&h.w, &h.b]);
        }
        v
    }

    /// The global L2 norm over all parameter gradients.
    pub fn global_norm(&self) -> Result<f64, ModelError> {
        let mut sq = 0f64;
        for t in self.tensors() {
            sq += t
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        Ok(sq.sqrt())
    }

    /// PyTorch `clip_grad_norm_`: scales all gradients by min(1, max_norm / (‖g‖ + 1e-6)).
    /// Returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> Result<f64, ModelError> {
        let norm = self.global_norm()?;
        let scale = max_norm / (norm + 1e-6);
        if scale < 1.0 {
            let s = |t: &mut Tensor| -> Result<(), ModelError> {
                *t = (&*t * scale)?;
                Ok(())
            };
            for l in &mut self.layers {
                s(&mut l.w_ih)?;
                s(&mut l.w_hh)?;
                s(&mut l.b_ih)?;
                s(&mut l.b_hh)?;
            }
            if let Some(h) = &mut self.head {
                s(&mut h.w)?;
                s(&mut h.b)?;
            }
        }
        Ok(norm)
    }
}

/// What the outputs are trained towards.
#[derive(Debug, Clone)]
pub enum Target {
    /// Real targets [B, T, O]; mean squared error.
    Regression(Tensor),
    /// Class labels [B, T] (u32); cross-entropy on the logits.
    Classes(Tensor),
}

/// A padded training batch. `weights` [B, T] says how much each step's loss
/// counts: zero at padded steps and at steps without a target (e.g. all but
/// the last for "classify at the last step").
#[derive(Debug, Clone)]
pub struct Batch {
    pub xs: Tensor,
    pub lengths: Vec<usize>,
    pub target: Target,
    pub weights: Tensor,
}

/// Loss normalisation: the weighted mean over targeted steps (and, for MSE,
/// over output features), as PyTorch's `reduction = "mean"` with weights.
/// Returns (loss, ∂L/∂ys) with ys [B, T, O] in the row order given.
pub fn loss_and_grad(
    ys: &Tensor,
    target: &Target,
    weights: &Tensor,
) -> Result<(f64, Tensor), ModelError> {
    let (_, _, o) = ys.dims3()?;
    let dtype = ys.dtype();
    let w = weights.to_dtype(dtype)?;
    let total = w.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if total <= 0.0 {
        return Err(ModelError::Input(
            "the batch has no targeted step (all weights zero)".into(),
        ));
    }
    let w3 = w.unsqueeze(2)?;
    match target {
        Target::Regression(t) => {
            let denom = total * o as f64;
            let err = (ys - t.to_dtype(dtype)?)?;
            let loss = err.sqr()?.broadcast_mul(&w3)?.sum_all()?;
            let loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()? / denom;
            // ∂/∂y of Σ w (y − t)² / denom.
            let diff = err.broadcast_mul(&w3)?;
            Ok((loss, (diff * (2.0 / denom))?))
        }
        Target::Classes(labels) => {
            let logp = candle_nn::ops::log_softmax(ys, D::Minus1)?;
            let onehot = one_hot(labels, o, dtype)?;
            let nll = (logp.mul(&onehot)?.sum(D::Minus1)? * -1.0)?;
            let loss = nll
                .mul(&w)?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
                / total;
            let grad = ((logp.exp()? - onehot)?.broadcast_mul(&w3)? / total)?;
            Ok((loss, grad))
        }
    }
}

fn one_hot(labels: &Tensor, classes: usize, dtype: DType) -> Result<Tensor, ModelError> {
    let (b, t) = labels.dims2()?;
    let v = labels
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let mut oh = vec![0f32; b * t * classes];
    for (k, &l) in v.iter().enumerate() {
        if (l as usize) < classes {
            oh[k * classes + l as usize] = 1.0;
        }
    }
    Ok(Tensor::from_vec(oh, (b, t, classes), labels.device())?.to_dtype(dtype)?)
}

impl GruModel {
    /// Forward + loss + analytic backward for one batch. `state` defaults to
    /// zeros; `window` = Some(k) truncates BPTT to windows of k steps.
    pub fn loss_and_gradients(
        &self,
        batch: &Batch,
        state: Option<&Tensor>,
        window: Option<usize>,
    ) -> Result<(f64, Gradients), ModelError> {
        if window == Some(0) {
            return Err(ModelError::Input("TBPTT window must be at least 1".into()));
        }
        let (cache, ys) = self.forward_impl(&batch.xs, &batch.lengths, state, true)?;
        let sort = sorter(&cache, self.device())?;
        let target = match &batch.target {
            Target::Regression(t) => Target::Regression(sort(t)?),
            Target::Classes(t) => Target::Classes(sort(t)?),
        };
        // Padded steps never count, whatever the caller's weights say there.
        let (b, t_len, _) = batch.xs.dims3()?;
        let valid: Vec<f32> = batch
            .lengths
            .iter()
            .flat_map(|&l| (0..t_len).map(move |t| if t < l { 1.0 } else { 0.0 }))
            .collect();
        let valid = Tensor::from_vec(valid, (b, t_len), self.device())?.to_dtype(self.dtype())?;
        let weights = batch.weights.to_dtype(self.dtype())?.mul(&valid)?;
        let (loss, dys) = loss_and_grad(&ys, &target, &sort(&weights)?)?;
        let grads = self.backward(&cache, &dys, window)?;
        Ok((loss, grads))
    }

    /// Backward from ∂L/∂ys ([B, T, O], sorted rows as `forward_impl` returns them).
    pub(crate) fn backward(
        &self,
        cache: &ForwardCache,
        dys: &Tensor,
        window: Option<usize>,
    ) -> Result<Gradients, ModelError> {
        let (b, t_len, _) = dys.dims3()?;
        let hs = self.config().hidden_size;
        let dys_tm = dys.transpose(0, 1)?.contiguous()?; // [T, B, O]
        let top = cache
            .layers
            .last()
            .ok_or_else(|| ModelError::Internal("no layers".into()))?;
        let (mut d_out, head_grad) = match self.head() {
            None => (dys_tm, None),
            Some(head) => {
                let o = head.b.dim(0)?;
                let dy = dys_tm.reshape((t_len * b, o))?;
                let h_top = top.run.ys.reshape((t_len * b, hs))?;
                let g = Head {
                    w: h_top.t()?.matmul(&dy)?,
                    b: dy.sum(0)?,
                };
                let dh = dy.matmul(&head.w.t()?)?.reshape((t_len, b, hs))?;
                (dh, Some(g))
            }
        };
        let mut layer_grads = Vec::with_capacity(self.layers().len());
        let mut dh0 = Vec::with_capacity(self.layers().len());
        for (k, layer) in self.layers().iter().enumerate().rev() {
            let lc = &cache.layers[k];
            let out = if self.backend() == Backend::Fused && matches!(self.device(), Device::Cpu) {
                layer_backward_fused(layer, lc, &cache.batch_sizes, &d_out, window)?
            } else {
                layer_backward(layer, lc, &cache.batch_sizes, &d_out, window)?
            };
            layer_grads.push(out.grads);
            dh0.push(out.dh0);
            d_out = out.dxs;
        }
        layer_grads.reverse();
        dh0.reverse();
        let unsort = super::network::inverse_index(&cache.order, self.device())?;
        let h0 = Tensor::stack(&dh0, 0)?.index_select(&unsort, 1)?;
        Ok(Gradients {
            layers: layer_grads,
            head: head_grad,
            h0,
        })
    }
}

/// Reorders a per-row tensor into the sorted row order of `cache`.
fn sorter<'a>(
    cache: &'a ForwardCache,
    device: &candle_core::Device,
) -> Result<impl Fn(&Tensor) -> candle_core::Result<Tensor> + 'a, ModelError> {
    let idx = Tensor::from_vec(
        cache.order.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        cache.order.len(),
        device,
    )?;
    Ok(move |t: &Tensor| t.contiguous()?.index_select(&idx, 0))
}

fn layer_backward_fused(
    layer: &GruLayer,
    lc: &super::network::LayerCache,
    batch_sizes: &[usize],
    d_out: &Tensor,
    window: Option<usize>,
) -> Result<LayerBackward, ModelError> {
    let cache = lc
        .run
        .cache
        .as_ref()
        .ok_or_else(|| ModelError::Internal("forward ran without a cache".into()))?;
    use super::cpu::backward::layer_backward_cpu as cpu;
    let inputs = (&lc.input, &lc.h0, &lc.run.ys, cache);
    let out = match lc.input.dtype() {
        DType::F32 => cpu::<f32>(layer, inputs, batch_sizes, d_out, window)?,
        DType::F64 => cpu::<f64>(layer, inputs, batch_sizes, d_out, window)?,
        _ => return layer_backward(layer, lc, batch_sizes, d_out, window),
    };
    Ok(LayerBackward {
        grads: out.grads,
        dxs: out.dxs,
        dh0: out.dh0,
    })
}

struct LayerBackward {
    grads: LayerParams,
    dxs: Tensor,
    dh0: Tensor,
}

fn layer_backward(
    layer: &GruLayer,
    lc: &super::network::LayerCache,
    batch_sizes: &[usize],
    d_out: &Tensor,
    window: Option<usize>,
) -> Result<LayerBackward, ModelError> {
    let (t_len, b_all, i) = lc.input.dims3()?;
    let hs = layer.hidden_size;
    let cache = lc
        .run
        .cache
        .as_ref()
        .ok_or_else(|| ModelError::Internal("forward ran without a cache".into()))?;
    let ys = &lc.run.ys;
    let dtype = ys.dtype();
    let dev = ys.device();
    let w_hh_t = layer.w_hh.t()?.contiguous()?;
    let (w_rz_t, w_c_t) = match layer.mode {
        ResetMode::BeforeMatmul => {
            let (rz, c) = before_weights(layer)?;
            (Some(rz.t()?.contiguous()?), Some(c.t()?.contiguous()?))
        }
        ResetMode::AfterMatmul => (None, None),
    };
    let pad = |t: Tensor, b: usize| -> candle_core::Result<Tensor> {
        if b == b_all {
            return Ok(t);
        }
        let z = Tensor::zeros((b_all - b, t.dim(1)?), t.dtype(), t.device())?;
        Tensor::cat(&[&t, &z], 0)
    };
    let mut eps = Tensor::zeros((b_all, hs), dtype, dev)?;
    let mut g_in: Vec<Tensor> = vec![Tensor::zeros((b_all, 3 * hs), dtype, dev)?; t_len];
    let mut g_rec: Vec<Tensor> = g_in.clone();
    // before_matmul: r ⊙ h_{t−1} per step, the input of U_c.
    let mut s_rows: Vec<Tensor> = Vec::new();
    if layer.mode == ResetMode::BeforeMatmul {
        s_rows = vec![Tensor::zeros((b_all, hs), dtype, dev)?; t_len];
    }
    for t in (0..t_len).rev() {
        let b = batch_sizes[t];
        if b == 0 {
            continue;
        }
        eps = (eps + d_out.get(t)?)?;
        let e = eps.narrow(0, 0, b)?;
        let c_t = cache.get(t)?.narrow(0, 0, b)?;
        let (r, z, c, g) = (
            c_t.narrow(1, 0, hs)?,
            c_t.narrow(1, hs, hs)?,
            c_t.narrow(1, 2 * hs, hs)?,
            c_t.narrow(1, 3 * hs, hs)?,
        );
        let h_prev = if t == 0 {
            lc.h0.clone()
        } else {
            ys.get(t - 1)?
        };
        let h_prev = h_prev.narrow(0, 0, b)?;
        let one_minus = |v: &Tensor| v.affine(-1.0, 1.0);
        let dsig = |v: &Tensor| -> candle_core::Result<Tensor> { v.mul(&one_minus(v)?) };
        let d_c = e.mul(&z)?.mul(&one_minus(&c.sqr()?)?)?;
        let d_z = e.mul(&(&c - &h_prev)?)?.mul(&dsig(&z)?)?;
        let through_identity = e.mul(&one_minus(&z)?)?;
        let dh_prev = match layer.mode {
            ResetMode::AfterMatmul => {
                let d_g = d_c.mul(&r)?;
                let d_r = d_c.mul(&g)?.mul(&dsig(&r)?)?;
                let gi = Tensor::cat(&[&d_r, &d_z, &d_c], 1)?;
                let gh = Tensor::cat(&[&d_r, &d_z, &d_g], 1)?;
                let dh = (through_identity + gh.matmul(&w_hh_t)?)?;
                g_in[t] = pad(gi, b)?;
                g_rec[t] = pad(gh, b)?;
                dh
            }
            ResetMode::BeforeMatmul => {
                let (w_rz_t, w_c_t) = (w_rz_t.as_ref(), w_c_t.as_ref());
                let (w_rz_t, w_c_t) = w_rz_t
                    .zip(w_c_t)
                    .ok_or_else(|| ModelError::Internal("before_matmul weights missing".into()))?;
                let d_s = d_c.matmul(w_c_t)?;
                let d_r = d_s.mul(&h_prev)?.mul(&dsig(&r)?)?;
                let grz = Tensor::cat(&[&d_r, &d_z], 1)?;
                let dh = ((through_identity + d_s.mul(&r)?)? + grz.matmul(w_rz_t)?)?;
                g_in[t] = pad(Tensor::cat(&[&d_r, &d_z, &d_c], 1)?, b)?;
                g_rec[t] = g_in[t].clone();
                s_rows[t] = pad(r.mul(&h_prev)?, b)?;
                dh
            }
        };
        // A window boundary: the state entering step t is a constant.
        let cut = matches!(window, Some(k) if t % k == 0 && t > 0);
        eps = if cut {
            eps.zeros_like()?
        } else if b == b_all {
            dh_prev
        } else {
            Tensor::cat(&[&dh_prev, &eps.narrow(0, b, b_all - b)?], 0)?
        };
    }
    // One matmul per weight gradient over all T·B rows.
    let rows = t_len * b_all;
    let g_in = Tensor::stack(&g_in, 0)?.reshape((rows, 3 * hs))?;
    let g_rec = Tensor::stack(&g_rec, 0)?.reshape((rows, 3 * hs))?;
    let x = lc.input.reshape((rows, i))?;
    let h_prev_all = Tensor::cat(&[&lc.h0.unsqueeze(0)?, &ys.narrow(0, 0, t_len - 1)?], 0)?
        .reshape((rows, hs))?;
    let d_w_ih = x.t()?.matmul(&g_in)?;
    let d_b_ih = g_in.sum(0)?;
    let (d_w_hh, d_b_hh) = match layer.mode {
        ResetMode::AfterMatmul => (h_prev_all.t()?.matmul(&g_rec)?, g_rec.sum(0)?),
        ResetMode::BeforeMatmul => {
            let s_all = Tensor::stack(&s_rows, 0)?.reshape((rows, hs))?;
            let rz = h_prev_all.t()?.matmul(&g_rec.narrow(1, 0, 2 * hs)?)?;
            let c = s_all.t()?.matmul(&g_rec.narrow(1, 2 * hs, hs)?)?;
            (Tensor::cat(&[&rz, &c], 1)?, d_b_ih.clone())
        }
    };
    let dxs = g_in.matmul(&layer.w_ih.t()?)?.reshape((t_len, b_all, i))?;
    // ε after step 0 is ∂L/∂h0; padded rows carry zero gate gradients throughout.
    Ok(LayerBackward {
        grads: LayerParams {
            w_ih: d_w_ih,
            w_hh: d_w_hh,
            b_ih: d_b_ih,
            b_hh: d_b_hh,
        },
        dxs,
        dh0: eps,
    })
}
