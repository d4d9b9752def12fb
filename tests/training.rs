//! The training loop learns, is deterministic, stops when told, and refuses
//! bad data. Thresholds are stated per task, with the baseline they beat.

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use gru_serve::model::train::{
    make_batch, train, validate_dataset, OptimizerKind, Progress, Schedule, SeqTarget, Sequence,
    TrainConfig,
};
use gru_serve::model::{GruModel, ModelConfig, ModelError, ResetMode, Task};
use rand::{Rng, SeedableRng};

mod common;

/// The adding problem (Hochreiter & Schmidhuber): inputs (value ~ U(0,1),
/// marker); two steps are marked; the target at the last step is the sum of
/// the two marked values. Predicting the mean gives MSE = 2/12 ≈ 0.167.
fn adding_problem(n: usize, t: usize, seed: u64) -> Vec<Sequence> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let a = rng.random_range(0..t / 2);
            let b = rng.random_range(t / 2..t);
            let mut inputs = Vec::with_capacity(2 * t);
            let mut sum = 0.0;
            for s in 0..t {
                let v: f32 = rng.random();
                let m = (s == a || s == b) as u8 as f32;
                sum += v * m;
                inputs.extend([v, m]);
            }
            let mut targets = vec![0.0; t];
            targets[t - 1] = sum;
            let mut weights = vec![0.0; t];
            weights[t - 1] = 1.0;
            Sequence {
                inputs,
                target: SeqTarget::Values(targets),
                weights: Some(weights),
            }
        })
        .collect()
}

/// Next-step prediction of a noisy sine wave (`common::noisy_sine`):
/// x_t = sin(ω t + φ) + noise (uniform, σ ≈ 0.05), target x_{t+1}. Noise
/// alone bounds the best MSE at σ² ≈ 0.0024; predicting the current value is
/// the baseline to beat.
fn noisy_sine(n: usize, t: usize, seed: u64) -> Vec<Sequence> {
    common::noisy_sine(n, t, seed)
        .into_iter()
        .map(|(inputs, targets)| Sequence {
            inputs,
            target: SeqTarget::Values(targets),
            weights: None,
        })
        .collect()
}

fn quiet(_: &Progress) {}

/// MSE of predicting x_{t+1} = x_t, the naive baseline.
fn copy_last_mse(data: &[Sequence]) -> f64 {
    let (mut sum, mut n) = (0.0, 0.0);
    for s in data {
        if let SeqTarget::Values(t) = &s.target {
            for (x, y) in s.inputs.iter().zip(t) {
                sum += ((x - y) as f64).powi(2);
                n += 1.0;
            }
        }
    }
    sum / n
}

#[test]
fn learns_the_adding_problem() {
    let data = adding_problem(1200, 50, 1);
    let cfg = ModelConfig::new(2, 24, 1).with_head(1);
    let model = GruModel::init(cfg, 2, &Device::Cpu).unwrap();
    let tc = TrainConfig {
        epochs: 12,
        batch_size: 32,
        learning_rate: 1e-2,
        clip_norm: Some(1.0),
        validation_fraction: 0.1,
        seed: 3,
        ..TrainConfig::default()
    };
    let mut last = None;
    let out = train(
        &model,
        &data,
        &tc,
        &AtomicBool::new(false),
        &mut |p: &Progress| {
            if p.epoch_done {
                last = Some(p.clone());
            }
        },
    )
    .unwrap();
    let val = out.best_val_loss.unwrap();
    eprintln!(
        "adding problem: train {} val {val} after {} epochs",
        out.final_train_loss, out.epochs_run
    );
    assert!(
        val < 0.02,
        "validation MSE {val} not below 0.02 (baseline 0.167)"
    );
    assert!(last.unwrap().validation_loss.is_some());
}

#[test]
fn learns_next_step_of_a_noisy_sine() {
    let data = noisy_sine(400, 40, 5);
    for mode in [ResetMode::AfterMatmul, ResetMode::BeforeMatmul] {
        let cfg = ModelConfig::new(1, 16, 1)
            .with_head(1)
            .with_reset_mode(mode);
        let model = GruModel::init(cfg, 6, &Device::Cpu).unwrap();
        let tc = TrainConfig {
            epochs: 30,
            batch_size: 16,
            learning_rate: 2e-2,
            schedule: Schedule::Cosine { min_lr: 1e-3 },
            validation_fraction: 0.2,
            seed: 7,
            ..TrainConfig::default()
        };
        let out = train(&model, &data, &tc, &AtomicBool::new(false), &mut quiet).unwrap();
        let val = out.best_val_loss.unwrap();
        eprintln!("noisy sine {mode:?}: val {val}");
        let copy_last = copy_last_mse(&data);
        assert!(
            val < 0.01 && val < copy_last / 4.0,
            "{mode:?}: validation MSE {val} not below 0.01 and copy-last/4 ({copy_last})"
        );
    }
}

fn weights_of(m: &GruModel) -> Vec<u32> {
    let mut v = Vec::new();
    for l in m.layers() {
        let p = l.params();
        for t in [p.w_ih, p.w_hh, p.b_ih, p.b_hh] {
            v.extend(
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits()),
            );
        }
    }
    v
}

#[test]
fn same_request_same_weights_bit_for_bit() {
    let data = noisy_sine(64, 20, 9);
    let cfg = ModelConfig::new(1, 8, 2).with_head(1);
    let model = GruModel::init(cfg, 1, &Device::Cpu).unwrap();
    let tc = TrainConfig {
        epochs: 2,
        batch_size: 8,
        tbptt_window: Some(5),
        optimizer: OptimizerKind::Sgd { momentum: 0.9 },
        schedule: Schedule::Step {
            every_epochs: 1,
            gamma: 0.5,
        },
        weight_decay: 1e-4,
        seed: 11,
        ..TrainConfig::default()
    };
    let run = || train(&model, &data, &tc, &AtomicBool::new(false), &mut quiet).unwrap();
    let (a, b) = (run(), run());
    assert_eq!(weights_of(&a.model), weights_of(&b.model));
    assert_ne!(
        weights_of(&a.model),
        weights_of(&model),
        "training changed nothing"
    );
    let other = TrainConfig {
        seed: 12,
        ..tc.clone()
    };
    let c = train(&model, &data, &other, &AtomicBool::new(false), &mut quiet).unwrap();
    assert_ne!(
        weights_of(&a.model),
        weights_of(&c.model),
        "the seed has no effect"
    );
}

#[test]
fn cancellation_stops_between_batches() {
    let data = noisy_sine(64, 20, 9);
    let model = GruModel::init(ModelConfig::new(1, 8, 1).with_head(1), 1, &Device::Cpu).unwrap();
    let cancel = AtomicBool::new(false);
    let mut batches = 0;
    let tc = TrainConfig {
        epochs: 50,
        batch_size: 4,
        ..TrainConfig::default()
    };
    let err = train(&model, &data, &tc, &cancel, &mut |_p: &Progress| {
        batches += 1;
        if batches == 3 {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap_err();
    assert!(matches!(err, ModelError::Cancelled), "{err}");
    assert_eq!(batches, 3);
}

#[test]
fn early_stopping_keeps_the_best_epoch() {
    // A large SGD step without clipping makes the validation loss bounce.
    let data = noisy_sine(80, 20, 2);
    let model = GruModel::init(ModelConfig::new(1, 8, 1).with_head(1), 4, &Device::Cpu).unwrap();
    let tc = TrainConfig {
        epochs: 40,
        batch_size: 8,
        learning_rate: 0.8,
        optimizer: OptimizerKind::Sgd { momentum: 0.9 },
        clip_norm: None,
        validation_fraction: 0.25,
        patience: Some(2),
        seed: 1,
        ..TrainConfig::default()
    };
    let mut vals = Vec::new();
    let out = train(
        &model,
        &data,
        &tc,
        &AtomicBool::new(false),
        &mut |p: &Progress| {
            if let Some(v) = p.validation_loss {
                vals.push(v);
            }
        },
    );
    let out = match out {
        Ok(o) => o,
        Err(ModelError::NonFinite(m)) => panic!("diverged instead: {m}"),
        Err(e) => panic!("{e}"),
    };
    assert!(out.stopped_early, "ran all epochs; val losses {vals:?}");
    assert!(out.epochs_run < 40);
    let best = vals.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(out.best_val_loss, Some(best));
    // The returned model is the best epoch's: its validation loss is `best`, not the last.
    assert!(vals.last().unwrap() > &best);
}

#[test]
fn non_finite_training_stops_with_a_clear_error() {
    let mut data = noisy_sine(16, 10, 2);
    for s in &mut data {
        if let SeqTarget::Values(v) = &mut s.target {
            v.iter_mut().for_each(|x| *x *= 1e30);
        }
    }
    let model = GruModel::init(ModelConfig::new(1, 4, 1).with_head(1), 4, &Device::Cpu).unwrap();
    let tc = TrainConfig {
        epochs: 3,
        batch_size: 4,
        clip_norm: None,
        learning_rate: 1.0,
        optimizer: OptimizerKind::Sgd { momentum: 0.0 },
        ..TrainConfig::default()
    };
    let err = train(&model, &data, &tc, &AtomicBool::new(false), &mut quiet).unwrap_err();
    assert!(matches!(err, ModelError::NonFinite(_)), "{err}");
}

#[test]
fn bad_data_is_refused_naming_sequence_and_field() {
    let reg = GruModel::init(ModelConfig::new(2, 4, 1).with_head(1), 1, &Device::Cpu).unwrap();
    let cls = GruModel::init(
        ModelConfig::new(2, 4, 1)
            .with_head(3)
            .with_task(Task::ClassifyPerStep),
        1,
        &Device::Cpu,
    )
    .unwrap();
    let ok = || Sequence {
        inputs: vec![0.1, 0.2, 0.3, 0.4],
        target: SeqTarget::Values(vec![1.0, 2.0]),
        weights: None,
    };
    let tc = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    let run = |m: &GruModel, d: Vec<Sequence>| {
        train(m, &d, &tc, &AtomicBool::new(false), &mut quiet)
            .unwrap_err()
            .to_string()
    };
    assert!(run(&reg, vec![]).contains("empty"));
    let mut ragged = ok();
    ragged.inputs.push(0.5);
    let e = run(&reg, vec![ok(), ragged]);
    assert!(e.contains("sequence 1") && e.contains("inputs"), "{e}");
    let mut nan = ok();
    nan.inputs[3] = f32::NAN;
    let e = run(&reg, vec![nan]);
    assert!(e.contains("sequence 0") && e.contains("inputs[3]"), "{e}");
    let mut inf = ok();
    inf.target = SeqTarget::Values(vec![1.0, f32::INFINITY]);
    assert!(run(&reg, vec![ok(), ok(), inf]).contains("sequence 2: targets[1]"));
    let mut short = ok();
    short.target = SeqTarget::Values(vec![1.0]);
    assert!(run(&reg, vec![short]).contains("targets has 1 values"));
    let labels = Sequence {
        inputs: vec![0.1, 0.2, 0.3, 0.4],
        target: SeqTarget::Classes(vec![0, 3]),
        weights: None,
    };
    let e = run(&cls, vec![labels]);
    assert!(e.contains("labels[1] = 3") && e.contains("0..3"), "{e}");
    assert!(run(&cls, vec![ok()]).contains("task is ClassifyPerStep"));
    let bad_tc = TrainConfig {
        batch_size: 0,
        ..TrainConfig::default()
    };
    let e = train(&reg, &[ok()], &bad_tc, &AtomicBool::new(false), &mut quiet).unwrap_err();
    assert!(e.to_string().contains("batch_size"));
    let _ = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu);
}

/// A one-label (ClassifyLast) sequence is scored at its last step only:
/// weights [0, 0, 1] give exactly the unweighted loss, and weights on an
/// earlier step — which has no label — are refused with the sequence, the
/// index and the rule, by the data check and by `train`.
#[test]
fn one_label_weights_count_at_the_last_step_only() {
    let f64_ = candle_core::DType::F64;
    let m = GruModel::init(
        ModelConfig::new(2, 4, 1)
            .with_head(3)
            .with_task(Task::ClassifyLast)
            .with_dtype(gru_serve::model::Precision::F64),
        5,
        &Device::Cpu,
    )
    .unwrap();
    let seq = |weights: Option<Vec<f32>>| Sequence {
        inputs: vec![0.1, -0.7, 0.4, 0.2, -0.3, 0.9],
        target: SeqTarget::Class(2),
        weights,
    };
    let loss = |s: &Sequence| {
        let b = make_batch(&[s], 2, 3, f64_, &Device::Cpu).unwrap();
        m.loss_and_gradients(&b, None, None).unwrap().0
    };
    let plain = loss(&seq(None));
    assert_eq!(loss(&seq(Some(vec![0.0, 0.0, 1.0]))), plain);
    // It is class 2's cross-entropy at the last step, from the forward outputs.
    let x = Tensor::from_vec(seq(None).inputs, (1, 3, 2), &Device::Cpu)
        .unwrap()
        .to_dtype(f64_)
        .unwrap();
    let (ys, _) = m.forward(&x, &[3], None).unwrap();
    let last = ys.get(0).unwrap().get(2).unwrap().to_vec1::<f64>().unwrap();
    let want = last.iter().map(|v| v.exp()).sum::<f64>().ln() - last[2];
    assert!((plain - want).abs() < 1e-12, "{plain} vs {want}");

    let cfg = m.config().clone();
    let tc = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    for (w, p) in [
        (vec![1.0, 0.0, 0.0], 0),
        (vec![1.0, 1.0, 1.0], 0),
        (vec![0.0, 0.5, 1.0], 1),
    ] {
        let data = vec![seq(None), seq(Some(w.clone()))];
        let e = validate_dataset(&data, &cfg, 100).unwrap_err();
        assert!(matches!(e, ModelError::Input(_)), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("sequence 1")
                && e.contains(&format!("weights[{p}]"))
                && e.contains("last step"),
            "{w:?}: {e}"
        );
        let e = train(&m, &data, &tc, &AtomicBool::new(false), &mut quiet)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sequence 1") && e.contains("last step"), "{e}");
    }
    // Zero weights before the last step are fine, and so is a zero last weight.
    validate_dataset(
        &[seq(Some(vec![0.0, 0.0, 3.0])), seq(Some(vec![0.0; 3]))],
        &cfg,
        100,
    )
    .unwrap();
}
