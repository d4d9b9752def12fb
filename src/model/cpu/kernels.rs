//! Fused elementwise GRU gate kernels for the CPU.
//!
//! candle's CPU `tanh`/`sigmoid` are scalar and each op is a separate pass over
//! memory; at B = 64 the gate math then costs as much as the matmuls. These
//! kernels do all of a step's gate math in one pass per row, with an `exp`
//! that the compiler can vectorize (no branches, no libm call), compiled for
//! AVX-512 / AVX2+FMA and chosen at run time, so the binary stays portable
//! (no `target-cpu=native`).
//!
//! Internal convention (see `layer.rs`): gate blocks ordered r, z, c (candidate),
//! and z weights the candidate: h' = h + z ⊙ (c − h) = (1 − z) ⊙ h + z ⊙ c.
//!
//! f32 uses the polynomial `exp` (max relative error ~2e-7, measured against
//! libm over [-88, 88] in the tests below); f64 (tests, gradient checks) uses
//! libm so finite differences see the exact function.

use candle_core::WithDType;

/// The float types the model computes in.
pub trait Real:
    WithDType + num_traits::Float + std::ops::AddAssign + Send + Sync + std::fmt::Debug
{
    fn exp_k(self) -> Self;

    #[inline(always)]
    fn sigmoid_k(self) -> Self {
        Self::one() / (Self::one() + (-self).exp_k())
    }

    #[inline(always)]
    fn tanh_k(self) -> Self {
        let two = Self::one() + Self::one();
        Self::one() - two / ((two * self).exp_k() + Self::one())
    }
}

impl Real for f32 {
    #[inline(always)]
    fn exp_k(self) -> f32 {
        exp_f32(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn exp_k(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn tanh_k(self) -> f64 {
        self.tanh()
    }
}

/// Branch-free `exp` for f32 (Cephes `expf` range reduction and polynomial).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 88.3 keeps 2^n finite (n ≤ 127); below -87.3 the result is ~0 anyway.
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    // mul_add: one FMA per term where the CPU has it (the AVX2/AVX-512
    // builds of the kernels); it halves the polynomial's latency chain.
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5); // Cephes: 5.0000001201e-1, the same f32
    let y = (p * r).mul_add(r, r) + 1.0;
    // 2^n without a float→int `as` cast (Rust's saturating cast checks each
    // lane for NaN and stops vectorization): adding 1.5·2^23 puts the integer
    // n in the low mantissa bits.
    let n_bits = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    y * scale
}

/// A read-only 2-D view: row `b` starts at `start + b * stride`.
#[derive(Clone, Copy)]
pub struct Rows<'a, T> {
    pub data: &'a [T],
    pub start: usize,
    pub stride: usize,
}

impl<'a, T> Rows<'a, T> {
    pub fn new(data: &'a [T], start: usize, stride: usize) -> Self {
        Rows {
            data,
            start,
            stride,
        }
    }

    #[inline(always)]
    pub fn row(&self, b: usize, width: usize) -> &'a [T] {
        let s = self.start + b * self.stride;
        &self.data[s..s + width]
    }

    /// The same rows shifted `cols` columns to the right.
    pub fn cols_from(self, cols: usize) -> Self {
        Rows {
            start: self.start + cols,
            ..self
        }
    }
}

/// Which instruction set the kernels were compiled for, picked once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Generic
    })
}

/// Defines `$name` that runs `$body` compiled for the best ISA available.
macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident<$T:ident>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        pub fn $name<$T: Real>($($arg: $ty),*) {
            #[inline(always)]
            fn body<$T: Real>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512<$T: Real>($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$T: Real>($($arg: $ty),*) { body($($arg),*) }
                match isa() {
                    // SAFETY: `isa()` checked that the CPU has these features.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Generic => {}
                }
            }
            body($($arg),*)
        }
    };
}

dispatch! {
    /// reset-after step for one row.
    /// `gi` = x W_ih and `gh` = h W_hh (3H wide, no biases); `gi_bias` =
    /// b_ih + [b_hr, b_hz, 0] (3H) and `gh_bias_c` = b_hn (H) are added here
    /// rather than pre-filled into the product buffers (one pass less over them).
    /// Writes h' and, when `cache` is given, [r | z | c | g] (4H) with g = W_hn h + b_hn.
    fn after_row<T>(gi: &[T], gi_bias: &[T], gh: &[T], gh_bias_c: &[T], h: &[T], out: &mut [T], cache: Option<&mut [T]>) {
        // Every slice cut to exactly `hs` so the bounds checks vanish and the loop vectorizes.
        let hs = h.len();
        let (gi_r, gi_z, gi_c) = (&gi[..hs], &gi[hs..2 * hs], &gi[2 * hs..3 * hs]);
        let (bi_r, bi_z, bi_c) = (&gi_bias[..hs], &gi_bias[hs..2 * hs], &gi_bias[2 * hs..3 * hs]);
        let (gh_r, gh_z, gh_c) = (&gh[..hs], &gh[hs..2 * hs], &gh[2 * hs..3 * hs]);
        let bh_c = &gh_bias_c[..hs];
        let out = &mut out[..hs];
        match cache {
            None => {
                for j in 0..hs {
                    let r = (gi_r[j] + bi_r[j] + gh_r[j]).sigmoid_k();
                    let z = (gi_z[j] + bi_z[j] + gh_z[j]).sigmoid_k();
                    let c = (gi_c[j] + bi_c[j] + r * (gh_c[j] + bh_c[j])).tanh_k();
                    out[j] = h[j] + z * (c - h[j]);
                }
            }
            Some(cache) => {
                let (cr, rest) = cache.split_at_mut(hs);
                let (cz, rest) = rest.split_at_mut(hs);
                let (cc, cg) = rest.split_at_mut(hs);
                let (cz, cc, cg) = (&mut cz[..hs], &mut cc[..hs], &mut cg[..hs]);
                for j in 0..hs {
                    let r = (gi_r[j] + bi_r[j] + gh_r[j]).sigmoid_k();
                    let z = (gi_z[j] + bi_z[j] + gh_z[j]).sigmoid_k();
                    let g = gh_c[j] + bh_c[j];
                    let c = (gi_c[j] + bi_c[j] + r * g).tanh_k();
                    out[j] = h[j] + z * (c - h[j]);
                    cr[j] = r;
                    cz[j] = z;
                    cc[j] = c;
                    cg[j] = g;
                }
            }
        }
    }
}

dispatch! {
    /// reset-before, first half: r and z from `gi` (3H, no bias; only r, z
    /// used), `gi_bias` (its r, z blocks) and `grz` = h [U_r | U_z] (2H).
    /// Writes `rz` = [r | z] and `s` = r ⊙ h.
    fn before_gates_row<T>(gi: &[T], gi_bias: &[T], grz: &[T], h: &[T], rz: &mut [T], s: &mut [T]) {
        let hs = h.len();
        let (r_out, z_out) = rz.split_at_mut(hs);
        let (z_out, s) = (&mut z_out[..hs], &mut s[..hs]);
        let (gi_r, gi_z) = (&gi[..hs], &gi[hs..2 * hs]);
        let (bi_r, bi_z) = (&gi_bias[..hs], &gi_bias[hs..2 * hs]);
        let (g_r, g_z) = (&grz[..hs], &grz[hs..2 * hs]);
        for j in 0..hs {
            let r = (gi_r[j] + bi_r[j] + g_r[j]).sigmoid_k();
            r_out[j] = r;
            z_out[j] = (gi_z[j] + bi_z[j] + g_z[j]).sigmoid_k();
            s[j] = r * h[j];
        }
    }
}

dispatch! {
    /// reset-before, second half: c = tanh(gi_c + b_c + (r ⊙ h) U_h), h' = h + z ⊙ (c − h).
    /// `gi_c`, `bias_c` and `gs` are H wide; `z` is the z block. Writes h' and optionally c.
    fn before_candidate_row<T>(gi_c: &[T], bias_c: &[T], gs: &[T], z: &[T], h: &[T], out: &mut [T], c_out: Option<&mut [T]>) {
        let hs = h.len();
        let out = &mut out[..hs];
        let (gi_c, bias_c, gs, z) = (&gi_c[..hs], &bias_c[..hs], &gs[..hs], &z[..hs]);
        match c_out {
            None => {
                for j in 0..hs {
                    let c = (gi_c[j] + bias_c[j] + gs[j]).tanh_k();
                    out[j] = h[j] + z[j] * (c - h[j]);
                }
            }
            Some(c_out) => {
                let c_out = &mut c_out[..hs];
                for j in 0..hs {
                    let c = (gi_c[j] + bias_c[j] + gs[j]).tanh_k();
                    out[j] = h[j] + z[j] * (c - h[j]);
                    c_out[j] = c;
                }
            }
        }
    }
}

dispatch! {
    /// BPTT, reset-after, one row: from ε (`e`), the cached [r | z | c | g]
    /// and h_{t−1}, writes the input-side gate gradients `gi` = [δr | δz | δc],
    /// the recurrent-side ones `gh` = [δr | δz | δg], and `dh` = ε ⊙ (1 − z)
    /// (the gated identity path; the caller adds gh · W_hhᵀ).
    fn after_backward_row<T>(e: &[T], cache: &[T], hp: &[T], gi: &mut [T], gh: &mut [T], dh: &mut [T]) {
        let hs = e.len();
        let one = T::one();
        let (cr, cz, cc, cg) = (&cache[..hs], &cache[hs..2 * hs], &cache[2 * hs..3 * hs], &cache[3 * hs..4 * hs]);
        let (hp, dh) = (&hp[..hs], &mut dh[..hs]);
        let (gi_r, rest) = gi.split_at_mut(hs);
        let (gi_z, gi_c) = rest.split_at_mut(hs);
        let (gi_z, gi_c) = (&mut gi_z[..hs], &mut gi_c[..hs]);
        let (gh_r, rest) = gh.split_at_mut(hs);
        let (gh_z, gh_g) = rest.split_at_mut(hs);
        let (gh_z, gh_g) = (&mut gh_z[..hs], &mut gh_g[..hs]);
        for j in 0..hs {
            let (r, z, c, g) = (cr[j], cz[j], cc[j], cg[j]);
            let ej = e[j];
            let dc = ej * z * (one - c * c);
            let dz = ej * (c - hp[j]) * z * (one - z);
            let dr = dc * g * r * (one - r);
            gi_r[j] = dr;
            gi_z[j] = dz;
            gi_c[j] = dc;
            gh_r[j] = dr;
            gh_z[j] = dz;
            gh_g[j] = dc * r;
            dh[j] = ej * (one - z);
        }
    }
}

dispatch! {
    /// BPTT, reset-before, first half of a row: δz and δc into `gi`'s z and c
    /// blocks, and `dh` = ε ⊙ (1 − z).
    fn before_backward_zc_row<T>(e: &[T], cache: &[T], hp: &[T], gi: &mut [T], dh: &mut [T]) {
        let hs = e.len();
        let one = T::one();
        let (cz, cc) = (&cache[hs..2 * hs], &cache[2 * hs..3 * hs]);
        let (hp, dh) = (&hp[..hs], &mut dh[..hs]);
        let (gi_z, gi_c) = gi[hs..3 * hs].split_at_mut(hs);
        for j in 0..hs {
            let (z, c) = (cz[j], cc[j]);
            let ej = e[j];
            gi_z[j] = ej * (c - hp[j]) * z * (one - z);
            gi_c[j] = ej * z * (one - c * c);
            dh[j] = ej * (one - z);
        }
    }
}

dispatch! {
    /// BPTT, reset-before, second half: from dS = δc · U_cᵀ, writes δr into
    /// `gi`'s r block, adds dS ⊙ r to `dh`, and stores s = r ⊙ h_{t−1} (the
    /// input of U_c, for its weight gradient).
    fn before_backward_r_row<T>(ds: &[T], cache: &[T], hp: &[T], gi: &mut [T], dh: &mut [T], s: &mut [T]) {
        let hs = ds.len();
        let one = T::one();
        let (cache, hp, gi, dh, s) = (&cache[..hs], &hp[..hs], &mut gi[..hs], &mut dh[..hs], &mut s[..hs]);
        for j in 0..hs {
            let r = cache[j];
            gi[j] = ds[j] * hp[j] * r * (one - r);
            dh[j] += ds[j] * r;
            s[j] = r * hp[j];
        }
    }
}

dispatch! {
    /// y[0..n] += Σ_k a[k] · B[k, 0..n], B row-major at `b_start` with row stride `b_rs`.
    /// The matrix–vector product of batch-1 steps: it streams B once, four
    /// rows at a time, with y held in L1 (gemm's packing costs more than the
    /// product here).
    fn axpy_rows<T>(y: &mut [T], a: &[T], b: &[T], b_start: usize, b_rs: usize) {
        let n = y.len();
        let row = |k: usize| &b[b_start + k * b_rs..b_start + k * b_rs + n];
        let k4 = a.len() / 4 * 4;
        for k in (0..k4).step_by(4) {
            let (a0, a1, a2, a3) = (a[k], a[k + 1], a[k + 2], a[k + 3]);
            let (r0, r1, r2, r3) = (row(k), row(k + 1), row(k + 2), row(k + 3));
            for j in 0..n {
                y[j] += a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j];
            }
        }
        for (k, &ak) in a.iter().enumerate().skip(k4) {
            for (yj, bj) in y.iter_mut().zip(row(k)) {
                *yj += ak * *bj;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_matches_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            let rel = ((got - want) / want).abs();
            // Per element: a running max would skip a NaN.
            assert!(
                rel < 5e-7,
                "exp_f32({x}) = {got}, libm {want} (relative {rel})"
            );
            worst = worst.max(rel);
            x += 0.013;
        }
        eprintln!("exp_f32: max relative error {worst:e}");
    }

    #[test]
    fn gates_saturate_cleanly() {
        for x in [-1e30f32, -200.0, 200.0, 1e30] {
            let s = x.sigmoid_k();
            let t = x.tanh_k();
            assert!(
                s.is_finite() && (0.0..=1.0).contains(&s),
                "sigmoid({x}) = {s}"
            );
            assert!(
                t.is_finite() && (-1.0..=1.0).contains(&t),
                "tanh({x}) = {t}"
            );
        }
        assert!((0.3f32.tanh_k() - 0.3f32.tanh()).abs() < 2e-7);
        assert!((0.0f32.sigmoid_k() - 0.5).abs() < 1e-7);
    }
}
