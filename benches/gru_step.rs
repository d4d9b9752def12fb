//! GRU inference micro-benchmark: gru-serve's model core against candle-nn's `GRU`.
//!
//! What is measured (f32, CPU, I = 64, H = 256, one layer, no head), side by side in one run:
//!
//! - `ours_after`: [`GruModel`] with `reset_mode = after_matmul` (PyTorch's cell), default
//!   fused CPU backend;
//! - `ours_before`: the same with `reset_mode = before_matmul` (the seed's cell);
//! - `candle_nn`: `candle_nn::rnn::gru(64, 256, ..)` built from plain random tensors through
//!   `VarBuilder::from_tensors` (not `Var`s, so no autograd graph is recorded).
//!
//! Groups, each at B = 1 and B = 64:
//!
//! - `step/B{b}/{impl}`: one step of a batch. Ours: `model.step(&x [B, I], &state [1, B, H])`;
//!   candle-nn: `RNN::step`. Throughput element = one step.
//! - `seq_T100/B{b}/{impl}`: a whole sequence, T = 100. Ours: `model.forward(&xs [B, T, I],
//!   &[T; B], Some(&h0))`; candle-nn: `RNN::seq_init(&xs, &h0)` (its step loop; the states are
//!   not concatenated into one tensor, which slightly favours candle-nn). Throughput element
//!   = one step, so µs per step = median / 100.
//!
//! Threads: `GRU_BENCH_THREADS` (default 2) is written to `RAYON_NUM_THREADS` and used to
//! build rayon's global pool at the very start of `main`, before anything touches rayon or
//! candle (candle's matmul re-reads /proc/cpuinfo on every call when `RAYON_NUM_THREADS` is
//! unset: 3.4× slower at B = 1). Both candle's matmul and ours read that setting.
//!
//! `GRU_BENCH_DIAG=1` adds `diag/B{b}/...` groups that time pieces of our fused step in
//! isolation (the recurrent gemm alone, serial and forced-parallel, the input-projection gemm
//! of a T = 100 sequence, the gate kernel, the per-call buffer allocation and the output
//! copies of `forward`), to see where a step's time goes.
//!
//! Run (release build; the filter argument is criterion's regex over the ids):
//!
//! ```sh
//! cargo bench --bench gru_step                                   # everything, 2 threads
//! GRU_BENCH_THREADS=1 cargo bench --bench gru_step -- /B1/       # the B = 1 cases, 1 thread
//! GRU_BENCH_DIAG=1 cargo bench --bench gru_step -- diag/         # the diagnostics only
//! ```
//!
//! The PyTorch / onnxruntime side of the comparison comes from
//! `scripts/reference/bench_reference.py` (see `scripts/reference/README.md`); the numbers
//! are collected in `BENCHMARKS.md`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::rnn::{GRUState, RNN};
use candle_nn::VarBuilder;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use gru_serve::model::cpu::gemm::PARALLEL_MIN_MACS;
use gru_serve::model::cpu::kernels;
use gru_serve::model::{GruModel, ModelConfig, ResetMode};

const I: usize = 64;
const H: usize = 256;
const T: usize = 100;
const BATCHES: [usize; 2] = [1, 64];

fn main() {
    // First thing, before rayon or candle run anything.
    let threads: usize = match std::env::var("GRU_BENCH_THREADS") {
        Ok(s) => s
            .trim()
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("GRU_BENCH_THREADS={s:?}: expected a positive integer")),
        Err(_) => 2,
    };
    let previous = std::env::var("RAYON_NUM_THREADS").ok();
    // Edition 2021, single-threaded at this point: no other thread reads the environment.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon's global pool was already initialised");
    println!(
        "gru_step: GRU_BENCH_THREADS = {threads} -> RAYON_NUM_THREADS = {threads} (was {}), \
         rayon pool = {} threads; I = {I}, H = {H}, T = {T}, f32, CPU",
        previous.as_deref().unwrap_or("unset"),
        rayon::current_num_threads()
    );

    let mut c = Criterion::default()
        .sample_size(25)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    bench_models(&mut c);
    if std::env::var("GRU_BENCH_DIAG").is_ok_and(|v| v == "1") {
        bench_diag(&mut c);
    }
    c.final_summary();
}

fn rand(shape: &[usize]) -> Tensor {
    Tensor::rand(-1f32, 1f32, shape, &Device::Cpu).expect("rand")
}

fn ours(mode: ResetMode) -> GruModel {
    let cfg = ModelConfig::new(I, H, 1).with_reset_mode(mode);
    GruModel::init(cfg, 7, &Device::Cpu).expect("GruModel::init")
}

/// candle-nn's GRU from plain tensors, U(−1/√H, 1/√H) like PyTorch's init.
fn candle_gru() -> candle_nn::GRU {
    let k = 1.0 / (H as f32).sqrt();
    let u = |shape: &[usize]| Tensor::rand(-k, k, shape, &Device::Cpu).expect("rand");
    let map: HashMap<String, Tensor> = [
        ("weight_ih_l0", u(&[3 * H, I])),
        ("weight_hh_l0", u(&[3 * H, H])),
        ("bias_ih_l0", u(&[3 * H])),
        ("bias_hh_l0", u(&[3 * H])),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .collect();
    let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
    candle_nn::rnn::gru(I, H, Default::default(), vb).expect("candle_nn::rnn::gru")
}

fn bench_models(c: &mut Criterion) {
    let ours_after = ours(ResetMode::AfterMatmul);
    let ours_before = ours(ResetMode::BeforeMatmul);
    let cnn = candle_gru();
    let ours_impls = [("ours_after", &ours_after), ("ours_before", &ours_before)];

    let mut g = c.benchmark_group("step");
    g.throughput(Throughput::Elements(1));
    for b in BATCHES {
        let x = rand(&[b, I]);
        let h0 = rand(&[1, b, H]);
        for (name, m) in ours_impls {
            let (y, s) = m.step(&x, &h0).expect("step");
            assert_eq!((y.dims(), s.dims()), (&[b, H][..], &[1, b, H][..]));
            g.bench_function(BenchmarkId::new(format!("B{b}"), name), |bn| {
                bn.iter(|| m.step(black_box(&x), black_box(&h0)).unwrap())
            });
        }
        let st = GRUState {
            h: h0.squeeze(0).unwrap(),
        };
        assert_eq!(cnn.step(&x, &st).unwrap().h.dims(), &[b, H]);
        g.bench_function(BenchmarkId::new(format!("B{b}"), "candle_nn"), |bn| {
            bn.iter(|| cnn.step(black_box(&x), black_box(&st)).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group(format!("seq_T{T}"));
    g.throughput(Throughput::Elements(T as u64));
    // One sequence is 1–150 ms: flat sampling keeps the iteration count (and the run) short.
    g.sampling_mode(SamplingMode::Flat);
    for b in BATCHES {
        let xs = rand(&[b, T, I]);
        let h0 = rand(&[1, b, H]);
        let lengths = vec![T; b];
        for (name, m) in ours_impls {
            let (ys, s) = m.forward(&xs, &lengths, Some(&h0)).expect("forward");
            assert_eq!((ys.dims(), s.dims()), (&[b, T, H][..], &[1, b, H][..]));
            g.bench_function(BenchmarkId::new(format!("B{b}"), name), |bn| {
                bn.iter(|| {
                    m.forward(black_box(&xs), &lengths, Some(black_box(&h0)))
                        .unwrap()
                })
            });
        }
        let st = GRUState {
            h: h0.squeeze(0).unwrap(),
        };
        assert_eq!(cnn.seq_init(&xs, &st).unwrap().len(), T);
        g.bench_function(BenchmarkId::new(format!("B{b}"), "candle_nn"), |bn| {
            bn.iter(|| cnn.seq_init(black_box(&xs), black_box(&st)).unwrap())
        });
    }
    g.finish();
}

/// dst[m, n] += a[m, k] · b[k, n], all row-major and contiguous, through the gemm crate.
fn gemm_into(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    par: gemm::Parallelism,
) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    // SAFETY: bounds checked above; dst does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// The thread choice the fused backend makes (`cpu/gemm.rs::parallelism`).
fn ours_parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Pieces of our fused after_matmul step, timed alone with preallocated buffers.
fn bench_diag(c: &mut Criterion) {
    let vals = |n: usize| -> Vec<f32> {
        rand(&[n])
            .to_vec1::<f32>()
            .expect("to_vec1")
            .iter()
            .map(|v| v * 0.06)
            .collect()
    };
    let w_hh = vals(H * 3 * H);
    let w_ih = vals(I * 3 * H);
    let threads = rayon::current_num_threads();
    let mut g = c.benchmark_group("diag");
    g.throughput(Throughput::Elements(1));
    for b in BATCHES {
        let h = vals(b * H);
        let mut gh = vec![0f32; b * 3 * H];
        // The recurrent matmul with the thread choice the fused backend makes.
        let par = ours_parallelism(b, 3 * H, H);
        g.bench_function(BenchmarkId::new(format!("B{b}"), "gemm_hh_as_ours"), |bn| {
            bn.iter(|| gemm_into(&mut gh, black_box(&h), &w_hh, b, 3 * H, H, par))
        });
        if threads > 1 {
            g.bench_function(BenchmarkId::new(format!("B{b}"), "gemm_hh_serial"), |bn| {
                bn.iter(|| {
                    gemm_into(
                        &mut gh,
                        black_box(&h),
                        &w_hh,
                        b,
                        3 * H,
                        H,
                        gemm::Parallelism::None,
                    )
                })
            });
            g.bench_function(BenchmarkId::new(format!("B{b}"), "gemm_hh_rayon"), |bn| {
                bn.iter(|| {
                    gemm_into(
                        &mut gh,
                        black_box(&h),
                        &w_hh,
                        b,
                        3 * H,
                        H,
                        gemm::Parallelism::Rayon(threads),
                    )
                })
            });
        }
        // The fused gate kernel over b rows (after_matmul, no cache).
        let gi = vals(b * 3 * H);
        let ghv = vals(b * 3 * H);
        let (gi_bias, gh_bias_c) = (vals(3 * H), vals(H));
        let mut out = vec![0f32; b * H];
        g.bench_function(BenchmarkId::new(format!("B{b}"), "gates_after"), |bn| {
            bn.iter(|| {
                for r in 0..b {
                    kernels::after_row(
                        &gi[r * 3 * H..(r + 1) * 3 * H],
                        &gi_bias,
                        &ghv[r * 3 * H..(r + 1) * 3 * H],
                        &gh_bias_c,
                        &h[r * H..(r + 1) * H],
                        &mut out[r * H..(r + 1) * H],
                        None,
                    );
                }
                black_box(&mut out);
            })
        });
    }
    g.finish();
    // The input projection of a whole T = 100 sequence as one matmul, per step
    // (the fused forward now computes it in L2-sized chunks of steps).
    let mut g = c.benchmark_group(format!("diag_T{T}"));
    g.throughput(Throughput::Elements(T as u64));
    g.sampling_mode(SamplingMode::Flat);
    for b in BATCHES {
        let x = vals(T * b * I);
        let mut gi = vec![0f32; T * b * 3 * H];
        let par = ours_parallelism(T * b, 3 * H, I);
        g.bench_function(BenchmarkId::new(format!("B{b}"), "gemm_ih_as_ours"), |bn| {
            bn.iter(|| gemm_into(&mut gi, black_box(&x), &w_ih, T * b, 3 * H, I, par))
        });
        // The per-call buffers `forward` allocated and zeroed before it kept a
        // per-thread workspace (gi [T·B, 3H] with the bias fill, ys [T, B, H]);
        // now only ys is allocated and zeroed per call.
        let bias = vals(3 * H);
        g.bench_function(
            BenchmarkId::new(format!("B{b}"), "alloc_zero_buffers"),
            |bn| {
                bn.iter(|| {
                    let mut gi = vec![0f32; T * b * 3 * H];
                    for row in gi.chunks_exact_mut(3 * H) {
                        row.copy_from_slice(&bias);
                    }
                    let ys = vec![0f32; T * b * H];
                    black_box((gi, ys))
                })
            },
        );
        // What `forward` did to the outputs after the time loop before the top
        // layer wrote [B, T, H] directly: [T, B, H] -> [B, T, H] (transpose +
        // contiguous), then the un-sort `index_select` (identity here, now skipped).
        let ys = rand(&[T, b, H]);
        let idx = Tensor::from_vec((0..b as u32).collect::<Vec<_>>(), b, &Device::Cpu).unwrap();
        g.bench_function(BenchmarkId::new(format!("B{b}"), "output_copies"), |bn| {
            bn.iter(|| {
                let t = black_box(&ys)
                    .transpose(0, 1)
                    .unwrap()
                    .contiguous()
                    .unwrap();
                t.index_select(&idx, 0).unwrap()
            })
        });
    }
    g.finish();
}
