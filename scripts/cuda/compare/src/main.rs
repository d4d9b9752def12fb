//! Runs the same GRU forward passes on the CPU and on CUDA device 0 and
//! fails if their outputs or final states differ by more than a tolerance.
//! Run by scripts/cuda/gpu-check.sh from the repository root.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use gru_serve::formats::native::load_native;
use gru_serve::model::{GruModel, ModelConfig, Precision, ResetMode};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

/// Forward on both devices with ragged lengths; returns the worst difference.
fn compare(name: &str, cpu_model: &GruModel, precision: Precision, gpu: &Device) -> Result<f64> {
    let cfg = cpu_model.config().clone();
    let cpu_model = cpu_model.to(&Device::Cpu, precision)?;
    let gpu_model = cpu_model.to(gpu, precision)?;
    let (b, t) = (16, 40);
    let lengths: Vec<usize> = (0..b).map(|i| t - (i * 7) % t).collect();
    let xs = Tensor::randn(0f32, 1f32, (b, t, cfg.input_size), &Device::Cpu)?
        .to_dtype(precision.dtype())?;
    let (ys_c, h_c) = cpu_model.forward(&xs, &lengths, None)?;
    let (ys_g, h_g) = gpu_model.forward(&xs.to_device(gpu)?, &lengths, None)?;
    let d = max_abs_diff(&ys_c, &ys_g)?.max(max_abs_diff(&h_c, &h_g)?);
    println!("{name:<40} {precision:?}: max |cpu - cuda| = {d:.3e}");
    Ok(d)
}

fn main() -> Result<()> {
    let gpu = Device::new_cuda(0)?;
    let mut worst: Vec<(String, f64, f64)> = Vec::new();
    let sine = load_native(Path::new("models/sine/1"), &Device::Cpu)?;
    let mut models = vec![("models/sine/1".to_string(), sine)];
    for (k, mode) in [ResetMode::AfterMatmul, ResetMode::BeforeMatmul].into_iter().enumerate() {
        let cfg = ModelConfig::new(8, 128, 2).with_head(4).with_reset_mode(mode);
        models.push((format!("random I=8 H=128 L=2 {}", mode.as_str()), GruModel::init(cfg, 7 + k as u64, &Device::Cpu)?));
    }
    for (name, model) in &models {
        worst.push((name.clone(), compare(name, model, Precision::F32, &gpu)?, 1e-4));
        worst.push((name.clone(), compare(name, model, Precision::F64, &gpu)?, 1e-10));
    }
    let failed: Vec<_> = worst.iter().filter(|(_, d, tol)| !(d <= tol)).collect();
    if !failed.is_empty() {
        return Err(format!("CPU and CUDA outputs differ beyond tolerance: {failed:?}").into());
    }
    println!("CPU and CUDA agree");
    Ok(())
}
