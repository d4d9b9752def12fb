//! The fused CPU forward of one layer ([`crate::model::Backend::Fused`]; the
//! contract is in `model/forward.rs`): products on weights packed once per
//! layer (`packed.rs`; the gemm crate where that kernel does not apply) into
//! per-thread buffers, the fused gate kernels of `kernels.rs`, and large
//! batches split by rows over helper threads (`parallel.rs`).

use candle_core::{Device, Tensor};

use super::gemm::{matmul_into, CpuView, SMALL_M};
use super::kernels::{self, Real, Rows};
use super::packed::{matmul_packed, LayerPacks, PackedB};
use crate::model::config::ResetMode;
use crate::model::error::ModelError;
use crate::model::layer::{GruLayer, LayerRun, YsLayout};

/// dst[m, n] (row stride n) = a[m, k] · b, through the packed weights when
/// there are some for this type and the product is not a batch-1 axpy.
#[allow(clippy::too_many_arguments)]
fn product<T: HasWorkspace>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    a: Rows<'_, T>,
    b: Rows<'_, T>,
    packed: Option<&PackedB>,
) {
    if let Some(p) = packed.filter(|_| m > SMALL_M) {
        if let (Some(d), Some(av)) = (T::as_f32_mut(dst), T::as_f32(a.data)) {
            debug_assert!(p.k() == k && p.n() == n, "packed weights of another shape");
            return matmul_packed(d, n, m, av, a.start, a.stride, p);
        }
    }
    matmul_into(dst, m, n, k, a, b, false)
}

/// Scratch buffers of the fused forward, kept per thread between calls: at
/// B = 64 allocating and zeroing them was ~20 µs per step (BENCHMARKS.md,
/// "Where the time goes"), and the sizes repeat from call to call.
pub(crate) struct Workspace<T> {
    gi: Vec<T>,
    gh: Vec<T>,
    h_a: Vec<T>,
    h_b: Vec<T>,
    rz: Vec<T>,
    s: Vec<T>,
}

impl<T: Real> Workspace<T> {
    const fn new() -> Self {
        Workspace {
            gi: Vec::new(),
            gh: Vec::new(),
            h_a: Vec::new(),
            h_b: Vec::new(),
            rz: Vec::new(),
            s: Vec::new(),
        }
    }

    /// Frees buffers that grew past `max_elems` (one huge batch should not
    /// pin its memory in every thread that ever ran it).
    fn trim(&mut self, max_elems: usize) {
        for v in [
            &mut self.gi,
            &mut self.gh,
            &mut self.h_a,
            &mut self.h_b,
            &mut self.rz,
            &mut self.s,
        ] {
            if v.capacity() > max_elems {
                *v = Vec::new();
            }
        }
    }
}

/// `v[..n]`, grown (zero-filled) if shorter. Callers overwrite what they read.
fn buf<T: Real>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::zero());
    }
    &mut v[..n]
}

/// The per-thread workspace for `T`.
pub(crate) trait HasWorkspace: Real + AsF32 {
    fn with_workspace<R>(f: impl FnOnce(&mut Workspace<Self>) -> R) -> R;
}

/// A slice as f32 when the element type is f32 (the packed kernel's type).
pub(crate) trait AsF32: Sized {
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

impl AsF32 for f32 {
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
}

impl AsF32 for f64 {
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
}

macro_rules! workspace_impl {
    ($t:ty) => {
        impl HasWorkspace for $t {
            fn with_workspace<R>(f: impl FnOnce(&mut Workspace<$t>) -> R) -> R {
                thread_local! {
                    static WS: std::cell::RefCell<Workspace<$t>> =
                        const { std::cell::RefCell::new(Workspace::new()) };
                }
                WS.with(|ws| match ws.try_borrow_mut() {
                    Ok(mut ws) => {
                        let r = f(&mut ws);
                        ws.trim(WORKSPACE_MAX_ELEMS);
                        r
                    }
                    // Re-entered (not expected): use fresh buffers.
                    Err(_) => f(&mut Workspace::new()),
                })
            }
        }
    };
}
workspace_impl!(f32);
workspace_impl!(f64);

/// Workspace buffers larger than this (elements) are freed after the call.
const WORKSPACE_MAX_ELEMS: usize = 4 << 20;

/// Target size of one chunk of input projections (`gi`): the projections are
/// computed a few steps at a time so the chunk is still in L2 when the time
/// loop reads it, instead of one T·B·3H buffer (19.7 MB at T = 100, B = 64)
/// written to and read back from memory.
const GI_CHUNK_BYTES: usize = 256 << 10;

/// Rows per block when a layer's batch is split over threads: fewer makes
/// the products too thin to be efficient.
const MIN_BLOCK_ROWS: usize = 8;

/// A layer run below this many multiply-adds (all steps, input and recurrent
/// products; ~50 µs of work) stays on the calling thread: handing half of it
/// to a helper costs ~5 µs when the helper is spinning and ~70 µs when it is
/// parked.
const SPLIT_MIN_MACS: usize = 1 << 22;

/// Rows per block above which a batch is cut into more blocks than threads
/// (up to two per thread), so a thread that was preempted takes fewer
/// blocks; below it, products stay as wide as possible (the gemm is ~8 %
/// slower per row at 32 rows than at 64).
const WIDE_BLOCK_ROWS: usize = 32;

/// Splits rows `0..b_all` into contiguous blocks of about equal work (steps
/// × rows; rows are sorted longest first), at least one per thread and each
/// at least `MIN_BLOCK_ROWS` rows. One block when splitting would not pay.
fn row_blocks(
    batch_sizes: &[usize],
    b_all: usize,
    macs_per_row_step: usize,
    threads: usize,
) -> Vec<(usize, usize)> {
    let work: usize = batch_sizes.iter().sum();
    let parts = if threads <= 1 {
        1
    } else {
        (b_all / WIDE_BLOCK_ROWS).clamp(threads, 2 * threads)
    }
    .min(b_all / MIN_BLOCK_ROWS);
    if parts <= 1 || work.saturating_mul(macs_per_row_step) < SPLIT_MIN_MACS {
        return vec![(0, b_all)];
    }
    // Steps of row r: how many t have it live.
    let steps = |r: usize| batch_sizes.partition_point(|&b| b > r);
    let mut blocks = Vec::with_capacity(parts);
    let (mut r0, mut done) = (0, 0usize);
    for k in 1..parts {
        let target = work * k / parts;
        let mut r = r0;
        // Take rows until this block reaches its share, leaving enough rows
        // for the blocks after it.
        while r < b_all - MIN_BLOCK_ROWS * (parts - k) && (r < r0 + MIN_BLOCK_ROWS || done < target)
        {
            done += steps(r);
            r += 1;
        }
        blocks.push((r0, r));
        r0 = r;
    }
    blocks.push((r0, b_all));
    blocks
}

/// Output memory that the row blocks of one forward write concurrently.
struct SharedOut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: blocks write disjoint rows (see `rows_mut`); T is plain data.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    fn new(v: &mut [T]) -> Self {
        SharedOut {
            ptr: v.as_mut_ptr(),
            len: v.len(),
        }
    }

    /// `len` elements from `start`.
    ///
    /// # Safety
    /// No two live slices from this may overlap: each row block only asks
    /// for positions of its own rows.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows_mut(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.len, "forward output index out of range");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

pub(crate) fn forward_cpu<T: HasWorkspace>(
    layer: &GruLayer,
    xs: &Tensor,
    batch_sizes: &[usize],
    h0: &Tensor,
    want_cache: bool,
    layout: YsLayout,
) -> Result<LayerRun, ModelError> {
    let (t_len, b_all, i) = xs.dims3()?;
    let hs = layer.hidden_size;
    let h3 = 3 * hs;
    let (xs, h0) = (xs.contiguous()?, h0.contiguous()?);
    let xv = CpuView::new(&xs)?;
    let wih = CpuView::new(&layer.w_ih)?;
    let whh = CpuView::new(&layer.w_hh)?;
    let gib = CpuView::new(&layer.gi_bias)?;
    let ghb = CpuView::new(&layer.gh_bias)?;
    let h0v = CpuView::new(&h0)?;
    let h0s = h0v.slice::<T>()?;
    let ctx = LoopCtx {
        mode: layer.mode,
        t_len,
        b_all,
        i,
        hs,
        x: xv.slice::<T>()?,
        w_ih: wih.slice::<T>()?,
        w_hh: whh.slice::<T>()?,
        gi_bias: gib.slice::<T>()?,
        gh_bias_c: &ghb.slice::<T>()?[2 * hs..],
        h0: h0s,
        batch_sizes,
        // None for f64 layers (`LayerPacks::build` packs f32 only).
        packs: layer.packs(),
        // Output (t, row) starts at t·ts + row·rs.
        ys_strides: match layout {
            YsLayout::TimeMajor => (b_all * hs, hs),
            YsLayout::BatchMajor => (hs, t_len * hs),
        },
    };
    let (ts, rs) = ctx.ys_strides;
    // Zero-filled: padded positions must read zero.
    let mut ys = vec![T::zero(); t_len * b_all * hs];
    let mut cache = if want_cache {
        vec![T::zero(); t_len * b_all * 4 * hs]
    } else {
        Vec::new()
    };
    let threads = rayon::current_num_threads();
    let blocks = row_blocks(batch_sizes, b_all, (i + hs) * h3, threads);
    let (ys_out, cache_out) = (SharedOut::new(&mut ys), SharedOut::new(&mut cache));
    let out = Outs {
        ys: ys_out,
        cache: want_cache.then_some(cache_out),
    };
    super::parallel::run_parts(blocks.len(), threads, &|k| {
        let (r0, r1) = blocks[k];
        T::with_workspace(|ws| time_loop(&ctx, r0, r1, ws, &out));
    });

    // Each row's final state: its output at its own last step (h0 if none).
    let mut h_last = Vec::with_capacity(b_all * hs);
    for row in 0..b_all {
        let steps = batch_sizes.partition_point(|&b| b > row);
        match steps {
            0 => h_last.extend_from_slice(&h0s[row * hs..(row + 1) * hs]),
            n => {
                let o = (n - 1) * ts + row * rs;
                h_last.extend_from_slice(&ys[o..o + hs]);
            }
        }
    }
    drop((xv, wih, whh, gib, ghb, h0v));
    let dev = Device::Cpu;
    let ys_shape = match layout {
        YsLayout::TimeMajor => (t_len, b_all, hs),
        YsLayout::BatchMajor => (b_all, t_len, hs),
    };
    Ok(LayerRun {
        ys: Tensor::from_vec(ys, ys_shape, &dev)?,
        h_last: Tensor::from_vec(h_last, (b_all, hs), &dev)?,
        cache: if want_cache {
            Some(Tensor::from_vec(cache, (t_len, b_all, 4 * hs), &dev)?)
        } else {
            None
        },
    })
}

/// What every row block of one layer's forward reads.
struct LoopCtx<'a, T> {
    mode: ResetMode,
    t_len: usize,
    b_all: usize,
    i: usize,
    hs: usize,
    x: &'a [T],
    w_ih: &'a [T],
    w_hh: &'a [T],
    gi_bias: &'a [T],
    gh_bias_c: &'a [T],
    h0: &'a [T],
    batch_sizes: &'a [usize],
    ys_strides: (usize, usize),
    packs: Option<&'a LayerPacks>,
}

struct Outs<T> {
    ys: SharedOut<T>,
    cache: Option<SharedOut<T>>,
}

/// The time loop over rows `r0..r1` (a block of consecutive rows; a row's
/// math never reads another row, so blocks run independently).
fn time_loop<T: HasWorkspace>(
    c: &LoopCtx<'_, T>,
    r0: usize,
    r1: usize,
    ws: &mut Workspace<T>,
    out: &Outs<T>,
) {
    let (hs, i, b_all) = (c.hs, c.i, c.b_all);
    let h3 = 3 * hs;
    let nb = r1 - r0;
    let (ts, rs) = c.ys_strides;
    // Live rows of this block at step t (a prefix of it, as in the batch).
    let live = |t: usize| c.batch_sizes[t].saturating_sub(r0).min(nb);
    let chunk_steps = (GI_CHUNK_BYTES / (std::mem::size_of::<T>() * nb * h3)).clamp(1, c.t_len);
    let gi = buf(&mut ws.gi, chunk_steps * nb * h3);
    let gh = buf(&mut ws.gh, nb * h3);
    let (rz, s) = match c.mode {
        ResetMode::AfterMatmul => (&mut [][..], &mut [][..]),
        ResetMode::BeforeMatmul => (buf(&mut ws.rz, nb * 2 * hs), buf(&mut ws.s, nb * hs)),
    };
    // h_{t−1} and h_t of the live rows; h_{−1} is read from h0 directly.
    let mut h_prev = buf(&mut ws.h_a, nb * hs);
    let mut h_next = buf(&mut ws.h_b, nb * hs);
    let h0 = &c.h0[r0 * hs..r1 * hs];
    for c0 in (0..c.t_len).step_by(chunk_steps) {
        let c1 = (c0 + chunk_steps).min(c.t_len);
        // Live rows are a prefix that only shrinks.
        if live(c0) == 0 {
            break;
        }
        let w_ih = Rows::new(c.w_ih, 0, h3);
        if nb == b_all {
            // Rows of steps c0..c1 are consecutive in x [T, B, I]: one
            // product; rows that die inside the chunk are projected anyway
            // and never read.
            let rows = (c1 - c0 - 1) * b_all + live(c0);
            let x = Rows::new(c.x, c0 * b_all * i, i);
            product(gi, rows, h3, i, x, w_ih, c.packs.map(|p| &p.w_ih));
        } else {
            for t in c0..c1 {
                let x_t = Rows::new(c.x, (t * b_all + r0) * i, i);
                let dst = &mut gi[(t - c0) * nb * h3..(t - c0 + 1) * nb * h3];
                product(dst, live(t), h3, i, x_t, w_ih, c.packs.map(|p| &p.w_ih));
            }
        }
        for t in c0..c1 {
            let b = live(t);
            if b == 0 {
                break;
            }
            let gi_t = Rows::new(gi, (t - c0) * nb * h3, h3);
            let hp: &[T] = if t == 0 { h0 } else { h_prev };
            // SAFETY: rows r0..r1 belong to this block alone.
            let cache_row = |row: usize| {
                out.cache
                    .as_ref()
                    .map(|o| unsafe { o.rows_mut((t * b_all + r0 + row) * 4 * hs, 4 * hs) })
            };
            match c.mode {
                ResetMode::AfterMatmul => {
                    let hv = Rows::new(hp, 0, hs);
                    let w = Rows::new(c.w_hh, 0, h3);
                    product(gh, b, h3, hs, hv, w, c.packs.map(|p| &p.hh));
                    for row in 0..b {
                        kernels::after_row(
                            gi_t.row(row, h3),
                            c.gi_bias,
                            &gh[row * h3..(row + 1) * h3],
                            c.gh_bias_c,
                            &hp[row * hs..(row + 1) * hs],
                            &mut h_next[row * hs..(row + 1) * hs],
                            cache_row(row),
                        );
                    }
                }
                ResetMode::BeforeMatmul => {
                    let hv = Rows::new(hp, 0, hs);
                    // grz = h [U_r | U_z]: the first 2H columns of w_hh.
                    let w = Rows::new(c.w_hh, 0, h3);
                    product(gh, b, 2 * hs, hs, hv, w, c.packs.map(|p| &p.hh));
                    for row in 0..b {
                        kernels::before_gates_row(
                            gi_t.row(row, h3),
                            c.gi_bias,
                            &gh[row * 2 * hs..(row + 1) * 2 * hs],
                            &hp[row * hs..(row + 1) * hs],
                            &mut rz[row * 2 * hs..(row + 1) * 2 * hs],
                            &mut s[row * hs..(row + 1) * hs],
                        );
                    }
                    // gs = (r ⊙ h) U_h: the last H columns of w_hh.
                    let sv = Rows::new(&*s, 0, hs);
                    let w = Rows::new(c.w_hh, 2 * hs, h3);
                    product(gh, b, hs, hs, sv, w, c.packs.and_then(|p| p.hh_c.as_ref()));
                    for row in 0..b {
                        let rz_row = &rz[row * 2 * hs..(row + 1) * 2 * hs];
                        let mut c_out = None;
                        if let Some(cr) = cache_row(row) {
                            cr[..2 * hs].copy_from_slice(rz_row);
                            c_out = Some(&mut cr[2 * hs..3 * hs]);
                        }
                        kernels::before_candidate_row(
                            gi_t.cols_from(2 * hs).row(row, hs),
                            &c.gi_bias[2 * hs..],
                            &gh[row * hs..(row + 1) * hs],
                            &rz_row[hs..],
                            &hp[row * hs..(row + 1) * hs],
                            &mut h_next[row * hs..(row + 1) * hs],
                            c_out,
                        );
                    }
                }
            }
            for (row, h) in h_next[..b * hs].chunks_exact(hs).enumerate() {
                // SAFETY: row r0 + row belongs to this block alone.
                let y = unsafe { out.ys.rows_mut(t * ts + (r0 + row) * rs, hs) };
                y.copy_from_slice(h);
            }
            std::mem::swap(&mut h_prev, &mut h_next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GruModel, ModelConfig};

    #[test]
    fn row_blocks_cover_every_row_once_and_balance_work() {
        // Too little work, too few rows, one thread: one block.
        assert_eq!(row_blocks(&[64], 64, 10, 2), vec![(0, 64)]);
        assert_eq!(row_blocks(&[15; 100], 15, 1 << 20, 2), vec![(0, 15)]);
        assert_eq!(row_blocks(&[64; 100], 64, 1 << 20, 1), vec![(0, 64)]);
        // Equal lengths: equal halves.
        assert_eq!(
            row_blocks(&[64; 10], 64, 1 << 20, 2),
            vec![(0, 32), (32, 64)]
        );
        // Lengths 40, 39, …, 1 (sorted longest first): the first block takes
        // fewer, longer rows; every block keeps at least MIN_BLOCK_ROWS rows.
        let lens: Vec<usize> = (1..=40).rev().collect();
        let bs: Vec<usize> = (0..40)
            .map(|t| lens.iter().filter(|&&l| l > t).count())
            .collect();
        for threads in [2, 3, 4, 8] {
            let blocks = row_blocks(&bs, 40, 1 << 20, threads);
            assert_eq!(blocks.first().unwrap().0, 0);
            assert_eq!(blocks.last().unwrap().1, 40);
            for w in blocks.windows(2) {
                assert_eq!(w[0].1, w[1].0);
            }
            assert!(
                blocks.iter().all(|(a, b)| b - a >= MIN_BLOCK_ROWS),
                "{blocks:?}"
            );
            assert_eq!(blocks.len(), threads.min(40 / MIN_BLOCK_ROWS));
        }
        // Wide batches: up to two blocks per thread, none thinner than 32 rows.
        for (b, threads, want) in [
            (64, 2, 2),
            (128, 2, 4),
            (256, 2, 4),
            (96, 2, 3),
            (256, 3, 6),
        ] {
            assert_eq!(
                row_blocks(&[b; 4], b, 1 << 20, threads).len(),
                want,
                "B = {b}, {threads} threads"
            );
        }
        let two = row_blocks(&bs, 40, 1 << 20, 2);
        let work = |(a, b): (usize, usize)| lens[a..b].iter().sum::<usize>();
        let (w0, w1) = (work(two[0]), work(two[1]));
        assert!(
            two[0].1 < 20 && w0.abs_diff(w1) <= lens[two[0].1],
            "{two:?}: {w0} vs {w1}"
        );
    }

    /// Fails unless every element is finite and within `tol`, element by
    /// element (`!(d <= tol)`): a max over the diffs would skip a NaN.
    fn assert_all_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        for (k, (a, b)) in got.iter().zip(want).enumerate() {
            let d = (a - b).abs();
            if !(a.is_finite() && b.is_finite() && d <= tol) {
                panic!(
                    "{what}: element {k}: {a:e} vs {b:e} (|diff| {d:e} > {tol:e} or not finite)"
                );
            }
        }
    }

    #[test]
    fn the_comparison_fails_on_a_late_nan_or_an_infinity() {
        let ok = vec![0.5f32; 64];
        assert_all_close("same", &ok, &ok, 0.0);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for (x, y) in [(bad, 0.5), (0.5, bad), (bad, bad)] {
                let (mut got, mut want) = (ok.clone(), ok.clone());
                got[63] = x;
                want[63] = y;
                let r = std::panic::catch_unwind(|| assert_all_close("late", &got, &want, 1e-6));
                assert!(r.is_err(), "{x} vs {y} at the last index passed");
            }
        }
        // And an ordinary difference over the tolerance.
        let mut got = ok.clone();
        got[40] += 1e-3;
        assert!(std::panic::catch_unwind(|| assert_all_close("diff", &got, &ok, 1e-4)).is_err());
    }

    /// The rows split over helper threads give what one thread gives: outputs,
    /// final states and the BPTT cache, both modes, variable lengths.
    #[test]
    fn split_rows_match_one_thread() {
        for mode in [ResetMode::AfterMatmul, ResetMode::BeforeMatmul] {
            let cfg = ModelConfig::new(16, 128, 1).with_reset_mode(mode);
            let m = GruModel::init(cfg, 3, &Device::Cpu).unwrap();
            let layer = &m.layers()[0];
            let (t_len, b) = (40, 37);
            let lens: Vec<usize> = (0..b).map(|r| t_len - (r * 7 % 40) / 5).collect();
            let mut lens_sorted = lens.clone();
            lens_sorted.sort_by(|a, b| b.cmp(a));
            let bs: Vec<usize> = (0..t_len)
                .map(|t| lens_sorted.iter().filter(|&&l| l > t).count())
                .collect();
            let xs = Tensor::randn(0f32, 1.0, (t_len, b, 16), &Device::Cpu).unwrap();
            let h0 = Tensor::randn(0f32, 0.5, (b, 128), &Device::Cpu).unwrap();
            assert_eq!(row_blocks(&bs, b, (16 + 128) * 3 * 128, 3).len(), 3);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                // What `layer_forward` runs for `Backend::Fused`, f32 on the CPU.
                pool.install(|| {
                    let r = forward_cpu::<f32>(layer, &xs, &bs, &h0, true, YsLayout::TimeMajor)
                        .unwrap();
                    [r.ys, r.h_last, r.cache.unwrap()]
                        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                let many = run(threads);
                for (k, (a, b)) in one.iter().zip(&many).enumerate() {
                    assert_all_close(
                        &format!("{mode:?}, {threads} threads, output {k}"),
                        a,
                        b,
                        1e-6,
                    );
                }
            }
        }
    }
}
