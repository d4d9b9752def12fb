//! The time loop of one layer over a padded, length-sorted batch, in two
//! implementations with the same contract:
//!
//! - [`Backend::Fused`] on the CPU: gemm calls with a deliberate thread count
//!   into preallocated buffers, and the fused gate kernels of `kernels.rs`.
//! - [`Backend::Reference`] (and any non-CPU device): plain candle ops. It is
//!   the portable path (CUDA) and the independent check of the fused one.
//!
//! Contract: `xs` is time-major [T, B, I], rows sorted by sequence length
//! (longest first) so that at step t the live rows are the prefix
//! `0..batch_sizes[t]`. Padded rows of `ys` are zero; each row's `h_last` is
//! its state after its own last step. For whole sequences, the input
//! projection of all T steps is one matmul.

use candle_core::{Device, Storage, StorageRef, Tensor};
use gemm::Parallelism;

use super::config::ResetMode;
use super::kernels::{self, Real, Rows};
use super::layer::{gate_block, GruLayer};
use super::ModelError;

/// Which implementation of the math runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Fused CPU kernels on the CPU; candle ops elsewhere.
    #[default]
    Fused,
    /// candle ops everywhere (reference for tests, and the CUDA path).
    Reference,
}

/// What a layer's forward produces.
pub(crate) struct LayerRun {
    /// [T, B, H]; zero at padded positions.
    pub ys: Tensor,
    /// [B, H]: each row's state at its own last step.
    pub h_last: Tensor,
    /// [T, B, 4H] = r | z | c | g per step (g = W_hc h + b_hc, `after_matmul`
    /// only; zero otherwise). Zero at padded positions. Only when asked.
    pub cache: Option<Tensor>,
}

pub(crate) fn layer_forward(
    layer: &GruLayer,
    xs: &Tensor,
    batch_sizes: &[usize],
    h0: &Tensor,
    want_cache: bool,
    backend: Backend,
) -> Result<LayerRun, ModelError> {
    if backend == Backend::Fused && matches!(xs.device(), Device::Cpu) {
        match xs.dtype() {
            candle_core::DType::F32 => {
                return forward_cpu::<f32>(layer, xs, batch_sizes, h0, want_cache)
            }
            candle_core::DType::F64 => {
                return forward_cpu::<f64>(layer, xs, batch_sizes, h0, want_cache)
            }
            _ => {}
        }
    }
    forward_reference(layer, xs, batch_sizes, h0, want_cache)
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

// ---------------------------------------------------------------- fused CPU

/// A contiguous CPU tensor's storage, held for reading.
pub(crate) struct CpuView<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> CpuView<'a> {
    pub fn new(t: &'a Tensor) -> Result<Self, ModelError> {
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| ModelError::Internal("fused kernel given a strided tensor".into()))?;
        Ok(CpuView { guard, start, end })
    }

    pub fn slice<T: Real>(&self) -> Result<&[T], ModelError> {
        match &*self.guard {
            Storage::Cpu(s) => Ok(&T::cpu_storage_as_slice(s)?[self.start..self.end]),
            _ => Err(ModelError::Internal(
                "fused kernel given a non-CPU tensor".into(),
            )),
        }
    }
}

/// Below this many multiply-adds a matmul runs on the calling thread. Rayon
/// loses on small products: on the 2-vCPU dev VM a wake-up of the other vCPU
/// costs ~100 µs and the idle workers then `sched_yield`-spin against the
/// caller, so even the B = 64 recurrent product (12.6 M MACs, ~170 µs serial)
/// was no faster with 2 threads and the sequences around it got slower
/// (BENCHMARKS.md). Only products of several milliseconds (BPTT's weight
/// gradients at large T·B) are left to rayon.
pub const PARALLEL_MIN_MACS: usize = 1 << 27;

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// A read-only strided matrix view: element (i, j) is `data[start + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub start: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major with row stride `rs`.
    pub fn rows(data: &'a [T], start: usize, rs: usize) -> Self {
        Mat {
            data,
            start,
            rs,
            cs: 1,
        }
    }
    /// The transpose of the row-major matrix at `start` with row stride `rs`.
    pub fn transposed(data: &'a [T], start: usize, rs: usize) -> Self {
        Mat {
            data,
            start,
            rs: 1,
            cs: rs,
        }
    }
}

/// Up to this many rows, a product runs as row-by-row axpy (batch-1 steps).
const SMALL_M: usize = 4;

/// dst[m, n] (row stride n) = (accumulate ? dst : 0) + a[m, k] · b[k, n].
pub(crate) fn gemm_into<T: Real>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::zero());
        }
        return;
    }
    if m <= SMALL_M && b.cs == 1 {
        let mut a_row = Vec::new();
        for (r, y) in dst.chunks_exact_mut(n).take(m).enumerate() {
            if !accumulate {
                y.fill(T::zero());
            }
            let s = a.start + r * a.rs;
            let row = if a.cs == 1 {
                &a.data[s..s + k]
            } else {
                a_row.clear();
                a_row.extend((0..k).map(|j| a.data[s + j * a.cs]));
                &a_row[..]
            };
            kernels::axpy_rows(y, row, b.data, b.start, b.rs);
        }
        return;
    }
    // The raw-pointer gemm below reads exactly these ranges; check them so a
    // shape bug is a panic here, never an out-of-bounds read.
    assert!(dst.len() >= m * n, "gemm dst too small");
    assert!(a.data.len() > a.start + (m - 1) * a.rs + (k - 1) * a.cs);
    assert!(b.data.len() > b.start + (k - 1) * b.rs + (n - 1) * b.cs);
    // SAFETY: bounds checked above; dst does not alias a or b (&mut vs &).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr().add(a.start),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.start),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism(m, n, k),
        )
    }
}

/// dst[m, n] = (accumulate ? dst : 0) + a[m, k] · b[k, n], both row-major views.
pub(crate) fn matmul_into<T: Real>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    a: Rows<'_, T>,
    b: Rows<'_, T>,
    accumulate: bool,
) {
    gemm_into(
        dst,
        m,
        n,
        k,
        Mat::rows(a.data, a.start, a.stride),
        Mat::rows(b.data, b.start, b.stride),
        accumulate,
    )
}

/// Fills each of the `m` rows of `dst` (width `bias.len()`) with `bias`.
pub(crate) fn fill_rows<T: Copy>(dst: &mut [T], bias: &[T], m: usize) {
    for row in dst.chunks_exact_mut(bias.len()).take(m) {
        row.copy_from_slice(bias);
    }
}

fn forward_cpu<T: Real>(
    layer: &GruLayer,
    xs: &Tensor,
    batch_sizes: &[usize],
    h0: &Tensor,
    want_cache: bool,
) -> Result<LayerRun, ModelError> {
    let (t_len, b_all, i) = xs.dims3()?;
    let hs = layer.hidden_size;
    let (xs, h0) = (xs.contiguous()?, h0.contiguous()?);
    let xv = CpuView::new(&xs)?;
    let wih = CpuView::new(&layer.w_ih)?;
    let whh = CpuView::new(&layer.w_hh)?;
    let gib = CpuView::new(&layer.gi_bias)?;
    let ghb = CpuView::new(&layer.gh_bias)?;
    let h0v = CpuView::new(&h0)?;
    let (x, w_ih, w_hh) = (xv.slice::<T>()?, wih.slice::<T>()?, whh.slice::<T>()?);
    let (gi_bias, gh_bias) = (gib.slice::<T>()?, ghb.slice::<T>()?);

    // All T steps' input projections in one matmul.
    let rows = t_len * b_all;
    let mut gi = vec![T::zero(); rows * 3 * hs];
    fill_rows(&mut gi, gi_bias, rows);
    matmul_into(
        &mut gi,
        rows,
        3 * hs,
        i,
        Rows::new(x, 0, i),
        Rows::new(w_ih, 0, 3 * hs),
        true,
    );

    let mut ys = vec![T::zero(); t_len * b_all * hs];
    let mut state = h0v.slice::<T>()?.to_vec();
    let mut cache = if want_cache {
        vec![T::zero(); t_len * b_all * 4 * hs]
    } else {
        Vec::new()
    };
    let mut gh = vec![T::zero(); b_all * 3 * hs];
    let mut s = vec![T::zero(); b_all * hs];
    let mut rz = vec![T::zero(); b_all * 2 * hs];

    for (t, &b) in batch_sizes.iter().enumerate() {
        if b == 0 {
            continue;
        }
        let gi_t = Rows::new(&gi, t * b_all * 3 * hs, 3 * hs);
        let y_t = &mut ys[t * b_all * hs..(t + 1) * b_all * hs];
        let mut cache_t = if want_cache {
            Some(&mut cache[t * b_all * 4 * hs..(t + 1) * b_all * 4 * hs])
        } else {
            None
        };
        match layer.mode {
            ResetMode::AfterMatmul => {
                fill_rows(&mut gh, gh_bias, b);
                let hv = Rows::new(&state, 0, hs);
                matmul_into(&mut gh, b, 3 * hs, hs, hv, Rows::new(w_hh, 0, 3 * hs), true);
                for row in 0..b {
                    let c = cache_t
                        .as_deref_mut()
                        .map(|c| &mut c[row * 4 * hs..(row + 1) * 4 * hs]);
                    kernels::after_row(
                        gi_t.row(row, 3 * hs),
                        &gh[row * 3 * hs..(row + 1) * 3 * hs],
                        &state[row * hs..(row + 1) * hs],
                        &mut y_t[row * hs..(row + 1) * hs],
                        c,
                    );
                }
            }
            ResetMode::BeforeMatmul => {
                let hv = Rows::new(&state, 0, hs);
                // grz = h [U_r | U_z]: the first 2H columns of w_hh.
                matmul_into(
                    &mut gh,
                    b,
                    2 * hs,
                    hs,
                    hv,
                    Rows::new(w_hh, 0, 3 * hs),
                    false,
                );
                for row in 0..b {
                    kernels::before_gates_row(
                        gi_t.row(row, 3 * hs),
                        &gh[row * 2 * hs..(row + 1) * 2 * hs],
                        &state[row * hs..(row + 1) * hs],
                        &mut rz[row * 2 * hs..(row + 1) * 2 * hs],
                        &mut s[row * hs..(row + 1) * hs],
                    );
                }
                // gs = (r ⊙ h) U_h: the last H columns of w_hh.
                let sv = Rows::new(&s, 0, hs);
                matmul_into(
                    &mut gh,
                    b,
                    hs,
                    hs,
                    sv,
                    Rows::new(w_hh, 2 * hs, 3 * hs),
                    false,
                );
                for row in 0..b {
                    let rz_row = &rz[row * 2 * hs..(row + 1) * 2 * hs];
                    let mut c_out = None;
                    if let Some(c) = cache_t.as_deref_mut() {
                        let c = &mut c[row * 4 * hs..(row + 1) * 4 * hs];
                        c[..2 * hs].copy_from_slice(rz_row);
                        c_out = Some(&mut c[2 * hs..3 * hs]);
                    }
                    kernels::before_candidate_row(
                        gi_t.cols_from(2 * hs).row(row, hs),
                        &gh[row * hs..(row + 1) * hs],
                        &rz_row[hs..],
                        &state[row * hs..(row + 1) * hs],
                        &mut y_t[row * hs..(row + 1) * hs],
                        c_out,
                    );
                }
            }
        }
        state[..b * hs].copy_from_slice(&y_t[..b * hs]);
    }
    drop((xv, wih, whh, gib, ghb, h0v));
    let dev = Device::Cpu;
    Ok(LayerRun {
        ys: Tensor::from_vec(ys, (t_len, b_all, hs), &dev)?,
        h_last: Tensor::from_vec(state, (b_all, hs), &dev)?,
        cache: if want_cache {
            Some(Tensor::from_vec(cache, (t_len, b_all, 4 * hs), &dev)?)
        } else {
            None
        },
    })
}
