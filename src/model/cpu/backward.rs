//! The BPTT of one layer on the CPU: the same equations as the candle-op
//! backward in `bptt.rs`, over raw buffers. Per step: one fused elementwise
//! pass per row and one gemm (two for `before_matmul`) to carry ε back to
//! h_{t−1}; at the end one gemm per weight gradient over all T·B rows.

use candle_core::{Device, Tensor};

use super::gemm::{gemm_into, CpuView, Mat};
use super::kernels::{self, Real};
use crate::model::config::ResetMode;
use crate::model::error::ModelError;
use crate::model::layer::{GruLayer, LayerParams};

pub(crate) struct CpuBackward {
    pub grads: LayerParams,
    pub dxs: Tensor,
    pub dh0: Tensor,
}

fn col_sums<T: Real>(m: &[T], cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); cols];
    for row in m.chunks_exact(cols) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += *v;
        }
    }
    out
}

/// [rows, cols] row-major → [cols, rows] row-major.
fn transpose<T: Real>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); rows * cols];
    for (r, row) in m.chunks_exact(cols).take(rows).enumerate() {
        for (c, v) in row.iter().enumerate() {
            out[c * rows + r] = *v;
        }
    }
    out
}

/// The forward's tensors a layer's backward reads: its input [T, B, I],
/// h0 [B, H], outputs [T, B, H] and gate cache [T, B, 4H].
pub(crate) type ForwardTensors<'a> = (&'a Tensor, &'a Tensor, &'a Tensor, &'a Tensor);

pub(crate) fn layer_backward_cpu<T: Real>(
    layer: &GruLayer,
    (input, h0, ys, cache): ForwardTensors<'_>,
    batch_sizes: &[usize],
    d_out: &Tensor,
    window: Option<usize>,
) -> Result<CpuBackward, ModelError> {
    let (t_len, b_all, i) = input.dims3()?;
    let hs = layer.hidden_size;
    let (h3, rows) = (3 * hs, t_len * b_all);
    let d_out = d_out.contiguous()?;
    let views = [input, h0, ys, cache, &d_out, &layer.w_ih, &layer.w_hh]
        .map(CpuView::new)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let x = views[0].slice::<T>()?;
    let h0v = views[1].slice::<T>()?;
    let ysv = views[2].slice::<T>()?;
    let cv = views[3].slice::<T>()?;
    let dov = views[4].slice::<T>()?;
    let w_ih = views[5].slice::<T>()?;
    let w_hh = views[6].slice::<T>()?;
    let after = layer.mode == ResetMode::AfterMatmul;
    // Transposed weights, laid out once: gemm re-packs a strided operand on
    // every call, and the recurrent product runs once per step.
    let w_hh_t = transpose(w_hh, hs, h3);
    let w_ih_t = transpose(w_ih, i, h3);
    let rec_t = |start_row: usize| Mat::rows(&w_hh_t, start_row * hs, hs);

    let mut gi = vec![T::zero(); rows * h3];
    let mut gh = if after {
        vec![T::zero(); rows * h3]
    } else {
        Vec::new()
    };
    let mut s_all = if after {
        Vec::new()
    } else {
        vec![T::zero(); rows * hs]
    };
    let mut eps = vec![T::zero(); b_all * hs];
    let mut dh = vec![T::zero(); b_all * hs];
    let mut ds = vec![T::zero(); b_all * hs];
    for t in (0..t_len).rev() {
        let b = batch_sizes[t];
        if b == 0 {
            continue;
        }
        let base = t * b_all;
        for (e, d) in eps[..b * hs]
            .iter_mut()
            .zip(&dov[base * hs..(base + b) * hs])
        {
            *e += *d;
        }
        let hp = if t == 0 {
            h0v
        } else {
            &ysv[(t - 1) * b_all * hs..t * b_all * hs]
        };
        for row in 0..b {
            let (r0, r1) = (row * hs, (row + 1) * hs);
            let g0 = (base + row) * h3;
            let c_row = &cv[(base + row) * 4 * hs..(base + row + 1) * 4 * hs];
            if after {
                kernels::after_backward_row(
                    &eps[r0..r1],
                    c_row,
                    &hp[r0..r1],
                    &mut gi[g0..g0 + h3],
                    &mut gh[g0..g0 + h3],
                    &mut dh[r0..r1],
                );
            } else {
                kernels::before_backward_zc_row(
                    &eps[r0..r1],
                    c_row,
                    &hp[r0..r1],
                    &mut gi[g0..g0 + h3],
                    &mut dh[r0..r1],
                );
            }
        }
        if after {
            // dh += [δr | δz | δg] · W_hhᵀ
            let a = Mat::rows(&gh, base * h3, h3);
            gemm_into(&mut dh, b, hs, h3, a, rec_t(0), true);
        } else {
            // dS = δc · U_cᵀ, then δr, then dh += [δr | δz] · [U_r | U_z]ᵀ
            let a = Mat::rows(&gi, base * h3 + 2 * hs, h3);
            gemm_into(&mut ds, b, hs, hs, a, rec_t(2 * hs), false);
            for row in 0..b {
                let (r0, r1) = (row * hs, (row + 1) * hs);
                let g0 = (base + row) * h3;
                kernels::before_backward_r_row(
                    &ds[r0..r1],
                    &cv[(base + row) * 4 * hs..(base + row + 1) * 4 * hs],
                    &hp[r0..r1],
                    &mut gi[g0..g0 + h3],
                    &mut dh[r0..r1],
                    &mut s_all[(base + row) * hs..(base + row + 1) * hs],
                );
            }
            let a = Mat::rows(&gi, base * h3, h3);
            gemm_into(&mut dh, b, hs, 2 * hs, a, rec_t(0), true);
        }
        // A window boundary: the state entering step t is a constant.
        if matches!(window, Some(k) if t % k == 0 && t > 0) {
            eps.fill(T::zero());
        } else {
            eps[..b * hs].copy_from_slice(&dh[..b * hs]);
        }
    }
    // One gemm per weight gradient over all T·B rows.
    let mut h_prev = Vec::with_capacity(rows * hs);
    h_prev.extend_from_slice(h0v);
    h_prev.extend_from_slice(&ysv[..(t_len - 1) * b_all * hs]);
    let mut d_w_ih = vec![T::zero(); i * h3];
    gemm_into(
        &mut d_w_ih,
        i,
        h3,
        rows,
        Mat::transposed(x, 0, i),
        Mat::rows(&gi, 0, h3),
        false,
    );
    let d_b_ih = col_sums(&gi, h3);
    let (d_w_hh, d_b_hh) = if after {
        let mut w = vec![T::zero(); hs * h3];
        gemm_into(
            &mut w,
            hs,
            h3,
            rows,
            Mat::transposed(&h_prev, 0, hs),
            Mat::rows(&gh, 0, h3),
            false,
        );
        (w, col_sums(&gh, h3))
    } else {
        let mut rz = vec![T::zero(); hs * 2 * hs];
        gemm_into(
            &mut rz,
            hs,
            2 * hs,
            rows,
            Mat::transposed(&h_prev, 0, hs),
            Mat::rows(&gi, 0, h3),
            false,
        );
        let mut c = vec![T::zero(); hs * hs];
        gemm_into(
            &mut c,
            hs,
            hs,
            rows,
            Mat::transposed(&s_all, 0, hs),
            Mat::rows(&gi, 2 * hs, h3),
            false,
        );
        let mut w = Vec::with_capacity(hs * h3);
        for k in 0..hs {
            w.extend_from_slice(&rz[k * 2 * hs..(k + 1) * 2 * hs]);
            w.extend_from_slice(&c[k * hs..(k + 1) * hs]);
        }
        (w, d_b_ih.clone())
    };
    let mut dxs = vec![T::zero(); rows * i];
    gemm_into(
        &mut dxs,
        rows,
        i,
        h3,
        Mat::rows(&gi, 0, h3),
        Mat::rows(&w_ih_t, 0, i),
        false,
    );
    drop(views);
    let dev = Device::Cpu;
    Ok(CpuBackward {
        grads: LayerParams {
            w_ih: Tensor::from_vec(d_w_ih, (i, h3), &dev)?,
            w_hh: Tensor::from_vec(d_w_hh, (hs, h3), &dev)?,
            b_ih: Tensor::from_vec(d_b_ih, h3, &dev)?,
            b_hh: Tensor::from_vec(d_b_hh, h3, &dev)?,
        },
        dxs: Tensor::from_vec(dxs, (t_len, b_all, i), &dev)?,
        dh0: Tensor::from_vec(eps, (b_all, hs), &dev)?,
    })
}
