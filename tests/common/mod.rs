//! Helpers shared by the model tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Loads a `*.data.safetensors` fixture (see scripts/reference/make_fixtures.py).
pub fn load_data(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).expect("load fixture data")
}

pub fn lengths(data: &HashMap<String, Tensor>) -> Vec<usize> {
    data["lengths"]
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|l| l as usize)
        .collect()
}

fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Largest absolute difference between two tensors of the same shape,
/// element by element. Panics if either holds a NaN or an infinity anywhere:
/// a max over a NaN would otherwise skip it (candle's `max` and `f64::max` both do).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (values_f64(a), values_f64(b));
    let mut worst = 0f64;
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            x.is_finite() && y.is_finite(),
            "element {k} is not finite: {x} vs {y}"
        );
        worst = worst.max((x - y).abs());
    }
    worst
}

/// Fails unless every element of `got` is finite and within `tol` of `want`'s,
/// naming the first element that is not (`!(d <= tol)`, so a NaN fails too).
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let (g, w) = (values_f64(got), values_f64(want));
    for (k, (x, y)) in g.iter().zip(&w).enumerate() {
        let d = (x - y).abs();
        if !(x.is_finite() && y.is_finite() && d <= tol) {
            panic!(
                "{what}: element {k} of {:?}: got {x:e}, want {y:e} (|diff| {d:e} > {tol:e} or not finite)",
                got.dims()
            );
        }
    }
}

/// Deterministic pseudo-random tensor in [-scale, scale).
pub fn rand_tensor(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-scale..scale) as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Next-step prediction of a noisy sine wave: n sequences of
/// x_s = sin(ω s + φ) plus uniform noise in ±0.085 (σ ≈ 0.05), ω in
/// [0.15, 0.35) rad/step, lengths t/2..=t; each as (inputs x_0..x_{len-1},
/// targets x_1..x_len). The one generator behind training.rs (model core)
/// and training_server.rs (gRPC).
pub fn noisy_sine(n: usize, t: usize, seed: u64) -> Vec<(Vec<f32>, Vec<f32>)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let w: f32 = rng.random_range(0.15..0.35);
            let phase: f32 = rng.random_range(0.0..std::f32::consts::TAU);
            let len = rng.random_range(t / 2..=t);
            let xs: Vec<f32> = (0..=len)
                .map(|s| {
                    (w * s as f32 + phase).sin() + 0.05 * (rng.random::<f32>() * 2.0 - 1.0) * 1.7
                })
                .collect();
            (xs[..len].to_vec(), xs[1..].to_vec())
        })
        .collect()
}

/// The gRPC test harness (server on port 0, model folders, status checks).
#[cfg(feature = "grpc")]
pub mod server;

/// The real binary as a child process (port, SERVING, SIGTERM).
#[cfg(feature = "grpc")]
pub mod process;

/// Real replicas behind nginx or HAProxy, with Redis (multi-replica tests).
#[cfg(feature = "grpc")]
pub mod cluster;

/// Sessions and StepStreams on the small model (sizes, requests, replies).
#[cfg(feature = "grpc")]
pub mod sessions;

/// KServe v2 / Triton requests on the small model.
#[cfg(feature = "grpc")]
pub mod triton;

/// The names in a folder, sorted; empty when it does not exist.
pub fn sorted_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
