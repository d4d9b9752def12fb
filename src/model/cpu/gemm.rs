//! Strided matrix views over CPU tensor storage and the gemm-crate products
//! on them (`gemm_into`, `matmul_into`), shared by the fused forward and the
//! CPU backward.

use candle_core::{Storage, StorageRef, Tensor};
use gemm::Parallelism;

use super::kernels::{self, Real, Rows};
use crate::model::error::ModelError;

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

/// Below this many multiply-adds a matmul runs on the calling thread; only
/// products of several milliseconds (BPTT's weight gradients at large T·B)
/// are left to rayon. Why: BENCHMARKS.md, "Why the model core is shaped this way".
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
pub(super) const SMALL_M: usize = 4;

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
