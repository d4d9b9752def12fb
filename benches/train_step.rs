//! One training step (forward + backward + AdamW), gru-serve's analytic BPTT
//! against candle's autograd on the same model, side by side in one run.
//!
//! - `ours`: [`Trainer::step`]: fused CPU forward with a cache, analytic BPTT
//!   (`src/model/bptt.rs`), candle-nn's `AdamW` fed through a `GradStore`.
//! - `candle_autograd`: candle-nn's `GRU` + `Linear` on `Var`s, `seq` over the
//!   batch, MSE, `AdamW::backward_step` (candle's recursive autograd).
//!
//! Both: one layer, a linear head to O = 1, MSE on every step, f32, CPU.
//! Shapes: B = 32, T = 50, I = 16, H = 128 and B = 1, T = 200, I = 64, H = 256.
//!
//! Threads: `GRU_BENCH_THREADS` (default 1, as PyTorch's reference run) is set
//! as `RAYON_NUM_THREADS` and rayon's pool size before anything runs.
//!
//! ```sh
//! cargo bench --bench train_step
//! ```
//! PyTorch's numbers come from `scripts/reference/bench_reference.py`.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use candle_nn::rnn::RNN;
use candle_nn::{Module, VarBuilder, VarMap};
use criterion::Criterion;
use gru_serve::model::bptt::{Batch, Target};
use gru_serve::model::train::{TrainConfig, Trainer};
use gru_serve::model::{GruModel, ModelConfig};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn main() {
    let threads: usize = std::env::var("GRU_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    gru_serve::init_compute_threads(threads);
    println!("train_step bench: {threads} thread(s)");
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (b, t, i, h) in [(32, 50, 16, 128), (1, 200, 64, 256)] {
        let name = format!("train_step/B{b}_T{t}_I{i}_H{h}");
        let mut group = c.benchmark_group(&name);
        let xs = rand(&[b, t, i], 1);
        let ys = rand(&[b, t, 1], 2);

        let model =
            GruModel::init(ModelConfig::new(i, h, 1).with_head(1), 3, &Device::Cpu).unwrap();
        let tc = TrainConfig {
            learning_rate: 1e-3,
            clip_norm: None,
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(&model, &tc).unwrap();
        let batch = Batch {
            xs: xs.clone(),
            lengths: vec![t; b],
            target: Target::Regression(ys.clone()),
            weights: Tensor::ones((b, t), DType::F32, &Device::Cpu).unwrap(),
        };
        group.bench_function("ours", |bench| {
            bench.iter(|| black_box(trainer.step(&batch, 1e-3).unwrap()))
        });

        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let gru = candle_nn::rnn::gru(i, h, Default::default(), vb.pp("gru")).unwrap();
        let head = candle_nn::linear(h, 1, vb.pp("head")).unwrap();
        let mut opt = AdamW::new(
            varmap.all_vars(),
            ParamsAdamW {
                lr: 1e-3,
                ..Default::default()
            },
        )
        .unwrap();
        group.bench_function("candle_autograd", |bench| {
            bench.iter(|| {
                let states = gru.seq(&xs).unwrap();
                let hs = gru
                    .states_to_tensor(&states)
                    .unwrap()
                    .reshape((b, t, h))
                    .unwrap();
                let y = head.forward(&hs).unwrap();
                let loss = (y - &ys).unwrap().sqr().unwrap().mean_all().unwrap();
                opt.backward_step(&loss).unwrap();
                black_box(loss)
            })
        });
        group.finish();
    }
    c.final_summary();
}
