//! Time and peak memory of one training step on a long sequence:
//! B = 8, T = 1000, I = 64, H = 256 (one layer, head O = 1, MSE, AdamW), f32, CPU.
//!
//! ```text
//! cargo run --release --example train_memory [-- threads steps]
//! ```
//! Prints the median step time over `steps` (default 5) steps and the peak
//! resident memory (VmHWM) above the process's size before the model existed.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use gru_serve::model::bptt::{Batch, Target};
use gru_serve::model::train::{TrainConfig, Trainer};
use gru_serve::model::{GruModel, ModelConfig};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let steps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    gru_serve::init_compute_threads(threads);
    let (b, t, i, h) = (8, 1000, 64, 256);
    let before = status_kib("VmRSS:");
    let model = GruModel::init(ModelConfig::new(i, h, 1).with_head(1), 1, &Device::Cpu)?;
    let xs = Tensor::randn(0f32, 1.0, (b, t, i), &Device::Cpu)?;
    let ys = Tensor::randn(0f32, 1.0, (b, t, 1), &Device::Cpu)?;
    let batch = Batch {
        xs,
        lengths: vec![t; b],
        target: Target::Regression(ys),
        weights: Tensor::ones((b, t), DType::F32, &Device::Cpu)?,
    };
    let tc = TrainConfig {
        learning_rate: 1e-3,
        clip_norm: Some(1.0),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&model, &tc)?;
    let mut times = Vec::new();
    for _ in 0..steps {
        let start = Instant::now();
        trainer.step(&batch, 1e-3)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let peak = status_kib("VmHWM:");
    println!(
        "B={b} T={t} I={i} H={h}, {threads} thread(s): median step {:.1} ms over {steps} steps (min {:.1}); peak RSS {:.1} MiB above the {:.1} MiB before the model",
        times[times.len() / 2],
        times[0],
        (peak.saturating_sub(before)) as f64 / 1024.0,
        before as f64 / 1024.0
    );
    Ok(())
}
