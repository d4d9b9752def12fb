//! Trains the model the repository ships as `models/sine/1`: next-step
//! prediction of a noisy sine wave, with this project's own training code.
//!
//! ```text
//! cargo run --release --example train_default_model -- models/sine/1
//! ```
//!
//! Input per step: [x_t] (a sine sample plus noise); output: [x̂_{t+1}], the
//! prediction of the next sample. Deterministic (fixed seeds).

use std::sync::atomic::AtomicBool;

use candle_core::Device;
use gru_serve::formats::{files, native};
use gru_serve::model::train::{train, Schedule, SeqTarget, Sequence, TrainConfig};
use gru_serve::model::{GruModel, ModelConfig};
use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gru_serve::init_compute_threads(1);
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/sine/1".into());
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let data: Vec<Sequence> = (0..1000)
        .map(|_| {
            let w: f32 = rng.random_range(0.1..0.5);
            let phase: f32 = rng.random_range(0.0..std::f32::consts::TAU);
            let amp: f32 = rng.random_range(0.5..1.0);
            let len = rng.random_range(20..=60);
            let xs: Vec<f32> = (0..=len)
                .map(|s| amp * (w * s as f32 + phase).sin() + rng.random_range(-0.05..0.05))
                .collect();
            Sequence {
                inputs: xs[..len].to_vec(),
                target: SeqTarget::Values(xs[1..].to_vec()),
                weights: None,
            }
        })
        .collect();
    let cfg = ModelConfig::new(1, 32, 1).with_head(1);
    let model = GruModel::init(cfg, 1, &Device::Cpu)?;
    let tc = TrainConfig {
        epochs: 30,
        batch_size: 32,
        learning_rate: 1e-2,
        schedule: Schedule::Cosine { min_lr: 5e-4 },
        validation_fraction: 0.1,
        patience: Some(5),
        seed: 7,
        ..TrainConfig::default()
    };
    let result = train(&model, &data, &tc, &AtomicBool::new(false), &mut |p| {
        if p.epoch_done {
            println!(
                "epoch {:>2}: train {:.5}  validation {:.5}",
                p.epoch,
                p.train_loss,
                p.validation_loss.unwrap_or(f64::NAN)
            );
        }
    })?;
    let dir = std::path::Path::new(&out);
    native::save_native(&result.model, dir)?;
    let serving = serde_json::json!({
        "description": "Next-step prediction of a noisy sine wave. Input per step: [x_t], a sample of a*sin(w t + phase) + noise with a in [0.5, 1], w in [0.1, 0.5] rad/step. Output per step: [the predicted x_{t+1}]. Trained by examples/train_default_model.rs.",
        "task": "regression"
    });
    files::write_atomic(
        &dir.join("serving.json"),
        serde_json::to_string_pretty(&serving)?.as_bytes(),
    )?;
    println!(
        "saved {} (validation MSE {:.5})",
        dir.display(),
        result.best_val_loss.unwrap_or(f64::NAN)
    );
    Ok(())
}
