//! A matrix product for the layer weights, packed once.
//!
//! Every step multiplies the same weights, yet the gemm crate re-packs the
//! weight operand on every call: at B = 64, H = 256 that packing was 15–17 %
//! of a whole step (perf, BENCHMARKS.md). Here the weights are packed once,
//! when a layer first runs, into panels of 32 columns ([k][32] each, zero
//! padded), and an AVX-512 kernel multiplies 12 rows × 32 columns at a time
//! with 24 accumulators, one panel (32 KB at k = 256) staying in L1 while all
//! row blocks pass over it. Only f32 on CPUs with AVX-512F; everything else
//! keeps using the gemm crate (`gemm::matmul_into`).

// Only the x86_64 kernel reads these; elsewhere `supported()` is false.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use candle_core::{Device, Tensor};

use super::gemm::CpuView;
use crate::model::config::ResetMode;

/// Columns per panel: two 16-lane vectors.
const NR: usize = 32;
/// Rows per block: 12 × 2 accumulators + 2 weight vectors + 1 broadcast fit
/// in the 32 vector registers.
const MR: usize = 12;
/// k per pass: a 32-column panel slice of KC rows is 32 KB, L1-sized.
const KC: usize = 256;

/// `b[k, col0..col0 + n]` of a row-major matrix, packed into panels.
#[derive(Debug)]
pub(crate) struct PackedB {
    data: Vec<f32>,
    /// Index of the first (64-byte aligned) element in `data`.
    off: usize,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Whether the packed kernel can run on this CPU.
    pub fn supported() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *OK.get_or_init(|| std::is_x86_feature_detected!("avx512f"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Packs columns `col0..col0 + n` of the row-major `b` (k rows, row
    /// stride `rs`).
    pub fn pack(b: &[f32], rs: usize, col0: usize, k: usize, n: usize) -> Self {
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR + 16];
        let off = data.as_ptr().align_offset(64).min(16);
        for p in 0..panels {
            let cols = NR.min(n - p * NR);
            for kk in 0..k {
                let src = kk * rs + col0 + p * NR;
                let dst = off + (p * k + kk) * NR;
                data[dst..dst + cols].copy_from_slice(&b[src..src + cols]);
            }
        }
        PackedB { data, off, k, n }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    fn panel(&self, p: usize) -> &[f32] {
        let s = self.off + p * self.k * NR;
        &self.data[s..s + self.k * NR]
    }
}

/// dst[m, n] (row stride `ldd`) = a[m, k] · b, with `a` row-major from
/// `a[a_start]`, row stride `lda`. Panics if the CPU lacks AVX-512F (callers
/// check [`PackedB::supported`]) or a range is out of bounds.
pub(crate) fn matmul_packed(
    dst: &mut [f32],
    ldd: usize,
    m: usize,
    a: &[f32],
    a_start: usize,
    lda: usize,
    b: &PackedB,
) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(PackedB::supported(), "packed matmul needs AVX-512F");
    assert!(
        dst.len() >= (m - 1) * ldd + n,
        "packed matmul: dst too small"
    );
    assert!(
        k == 0 || a.len() > a_start + (m - 1) * lda + (k - 1),
        "packed matmul: a too small"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F checked above; every access below stays inside the
    // ranges just checked (rows < m, columns < n, k-indices < k).
    unsafe {
        avx512::matmul(dst, ldd, m, &a[a_start..], lda, b)
    }
}

/// A layer's weights packed for [`matmul_packed`].
pub(crate) struct LayerPacks {
    pub(super) w_ih: PackedB,
    /// All 3H columns (`after_matmul`) or [U_r | U_z] (`before_matmul`).
    pub(super) hh: PackedB,
    /// U_h (`before_matmul` only).
    pub(super) hh_c: Option<PackedB>,
}

impl std::fmt::Debug for LayerPacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerPacks").finish_non_exhaustive()
    }
}

impl LayerPacks {
    /// The packs of a layer in `mode` with input weights `w_ih` [I, 3H] and
    /// recurrent weights `w_hh` [H, 3H] (the internal layout, `layer.rs`).
    /// None unless they are f32 on the CPU and the CPU has AVX-512F.
    pub(crate) fn build(
        mode: ResetMode,
        input_size: usize,
        hidden_size: usize,
        w_ih: &Tensor,
        w_hh: &Tensor,
    ) -> Option<LayerPacks> {
        if w_ih.dtype() != candle_core::DType::F32
            || !matches!(w_ih.device(), Device::Cpu)
            || !PackedB::supported()
        {
            return None;
        }
        let (i, hs) = (input_size, hidden_size);
        let wih = CpuView::new(w_ih).ok()?;
        let whh = CpuView::new(w_hh).ok()?;
        let (w_ih, w_hh) = (wih.slice::<f32>().ok()?, whh.slice::<f32>().ok()?);
        let h3 = 3 * hs;
        Some(match mode {
            ResetMode::AfterMatmul => LayerPacks {
                w_ih: PackedB::pack(w_ih, h3, 0, i, h3),
                hh: PackedB::pack(w_hh, h3, 0, hs, h3),
                hh_c: None,
            },
            ResetMode::BeforeMatmul => LayerPacks {
                w_ih: PackedB::pack(w_ih, h3, 0, i, h3),
                hh: PackedB::pack(w_hh, h3, 0, hs, 2 * hs),
                hh_c: Some(PackedB::pack(w_hh, h3, 2 * hs, hs, hs)),
            },
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PackedB, KC, MR, NR};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul(
        dst: &mut [f32],
        ldd: usize,
        m: usize,
        a: &[f32],
        lda: usize,
        b: &PackedB,
    ) {
        let (k, n) = (b.k, b.n);
        for p in 0..n.div_ceil(NR) {
            let panel = b.panel(p);
            let cols = NR.min(n - p * NR);
            // Lanes of the two vectors that are real columns.
            let mask0: __mmask16 = if cols >= 16 {
                0xFFFF
            } else {
                (1u16 << cols) - 1
            };
            let mask1: __mmask16 = if cols >= 32 {
                0xFFFF
            } else if cols > 16 {
                (1u16 << (cols - 16)) - 1
            } else {
                0
            };
            let mut k0 = 0;
            loop {
                let kc = KC.min(k - k0);
                let first = k0 == 0;
                let mut r0 = 0;
                while r0 < m {
                    let rows = MR.min(m - r0);
                    let ap = a.as_ptr().add(r0 * lda + k0);
                    let wp = panel.as_ptr().add(k0 * NR);
                    let dp = dst.as_mut_ptr().add(r0 * ldd + p * NR);
                    macro_rules! go {
                        ($($r:literal),*) => {
                            match rows {
                                $($r => block::<$r>(ap, lda, wp, kc, dp, ldd, first, mask0, mask1),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    go!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
                    r0 += rows;
                }
                k0 += kc;
                if k0 >= k {
                    break;
                }
            }
        }
    }

    /// R rows × 32 columns over `kc` k-steps; `first` starts from zero,
    /// otherwise adds to what `dst` holds (the previous k-chunk).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize>(
        ap: *const f32,
        lda: usize,
        wp: *const f32,
        kc: usize,
        dp: *mut f32,
        ldd: usize,
        first: bool,
        mask0: __mmask16,
        mask1: __mmask16,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if !first {
            for (r, acc) in acc.iter_mut().enumerate() {
                acc[0] = _mm512_maskz_loadu_ps(mask0, dp.add(r * ldd));
                acc[1] = _mm512_maskz_loadu_ps(mask1, dp.add(r * ldd + 16));
            }
        }
        for kk in 0..kc {
            let w0 = _mm512_loadu_ps(wp.add(kk * NR));
            let w1 = _mm512_loadu_ps(wp.add(kk * NR + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ap.add(r * lda + kk));
                acc[0] = _mm512_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, w1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(dp.add(r * ldd), mask0, acc[0]);
            _mm512_mask_storeu_ps(dp.add(r * ldd + 16), mask1, acc[1]);
        }
    }

    const _: () = assert!(MR == 12 && NR == 32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::gemm::matmul_into;
    use crate::model::cpu::kernels::Rows;

    #[allow(clippy::too_many_arguments)]
    fn naive(
        a: &[f32],
        lda: usize,
        m: usize,
        b: &[f32],
        rs: usize,
        col0: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for kk in 0..k {
                    s += a[i * lda + kk] as f64 * b[kk * rs + col0 + j] as f64;
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    /// The packed kernel where the CPU has AVX-512F, and always the gemm-crate
    /// product that replaces it elsewhere (`gemm::matmul_into`, same column
    /// windows), against a float64 naive product.
    #[test]
    fn matches_a_naive_product_on_awkward_shapes() {
        let packed_runs = PackedB::supported();
        if !packed_runs {
            eprintln!(
                "SKIPPED: packed AVX-512 kernel not checked (this CPU has no AVX-512F); \
                 checking only the gemm-crate fallback used in its place"
            );
        }
        let val = |i: usize| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
        // Rows around MR, columns around NR (partial panels), k around KC,
        // a column window (before_matmul packs [U_r | U_z] and U_h apart).
        for &(m, k, n, col0, rs) in &[
            (1, 1, 1, 0, 1),
            (13, 7, 33, 0, 33),
            (12, 64, 768, 0, 768),
            (64, 256, 768, 0, 768),
            (25, 300, 50, 17, 99),
            (5, 513, 16, 0, 16),
            (37, 96, 96, 192, 288),
        ] {
            let lda = k + 3;
            let a: Vec<f32> = (0..m * lda).map(val).collect();
            let b: Vec<f32> = (0..k * rs).map(|i| val(i + 7)).collect();
            let want = naive(&a, lda, m, &b, rs, col0, k, n);
            let close = |what: &str, g: f32, w: f32, i: usize, j: usize| {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{what} m{m} k{k} n{n} [{i},{j}]: {g} vs {w}"
                );
            };
            let mut fallback = vec![f32::NAN; m * n];
            matmul_into(
                &mut fallback,
                m,
                n,
                k,
                Rows::new(&a, 0, lda),
                Rows::new(&b, col0, rs),
                false,
            );
            for i in 0..m {
                for j in 0..n {
                    close("gemm fallback", fallback[i * n + j], want[i * n + j], i, j);
                }
            }
            if !packed_runs {
                continue;
            }
            let packed = PackedB::pack(&b, rs, col0, k, n);
            let ldd = n + 5;
            let mut dst = vec![f32::NAN; m * ldd];
            matmul_packed(&mut dst, ldd, m, &a, 0, lda, &packed);
            for i in 0..m {
                for j in 0..n {
                    close("packed", dst[i * ldd + j], want[i * n + j], i, j);
                }
                // Columns past n are never written.
                assert!(dst[i * ldd + n..(i + 1) * ldd].iter().all(|v| v.is_nan()));
            }
        }
    }
}
