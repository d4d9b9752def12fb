//! The training loop: epochs over shuffled mini-batches, a validation
//! split, early stopping, progress reports and cancellation. What the
//! server's training endpoint runs. Gradients come from [`super::bptt`].
//!
//! - `data.rs`: sequences, dataset checks, padded batches, bucketing;
//! - `hyper.rs`: hyper-parameters, optimizers and schedules, and their checks;
//! - `trainer.rs`: one model under training and its optimizer step.

mod data;
mod hyper;
mod trainer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::DType;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::error::ModelError;
use super::network::GruModel;

use data::bucketed_batches;
pub use data::{make_batch, validate_dataset, SeqTarget, Sequence, DEFAULT_MAX_SEQ_LEN};
pub use hyper::{
    HyperparameterError, OptimizerKind, Schedule, TrainConfig, MAX_BATCH_SIZE, MAX_EPOCHS,
};
pub use trainer::Trainer;

/// One progress report, as clients see it: after every batch, and at the
/// end of every epoch. Epochs and batches count from 1. The one type from
/// the loop to the wire: the engine records it and the service maps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub epoch: usize,
    pub epochs: usize,
    pub batch: usize,
    pub batches_per_epoch: usize,
    /// Mean training loss over the epoch so far.
    pub train_loss: f64,
    /// Set on the end-of-epoch report when there is a validation split.
    pub validation_loss: Option<f64>,
    /// Global gradient norm of the last batch, before clipping; None at
    /// epoch ends (they have no batch of their own).
    pub grad_norm: Option<f64>,
    pub sequences_per_second: f64,
    pub learning_rate: f64,
    /// Since `train` started.
    pub elapsed_seconds: f64,
    /// What is left at the pace so far.
    pub eta_seconds: f64,
    pub epoch_done: bool,
}

/// Where a run stands in time: elapsed and estimated remaining seconds
/// after batch `batch` (0-based) of epoch `epoch` (0-based).
fn timing(
    started: Instant,
    epoch: usize,
    batch: usize,
    epochs: usize,
    batches_per_epoch: usize,
) -> (f64, f64) {
    let total = (epochs * batches_per_epoch).max(1);
    let done = (epoch * batches_per_epoch + batch + 1).min(total);
    let secs = started.elapsed().as_secs_f64();
    (secs, secs * (total - done) as f64 / done as f64)
}

/// The result of a run: a complete model (weights + config) ready to save.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub model: GruModel,
    pub epochs_run: usize,
    pub final_train_loss: f64,
    pub best_val_loss: Option<f64>,
    pub stopped_early: bool,
}

/// Mean loss of `model` over `idx` (weighted by each batch's target weight).
fn evaluate(
    model: &GruModel,
    data: &[Sequence],
    idx: &[usize],
    batch_size: usize,
) -> Result<f64, ModelError> {
    let cfg = model.config();
    let (mut sum, mut weight) = (0.0, 0.0);
    for chunk in idx.chunks(batch_size) {
        let seqs: Vec<&Sequence> = chunk.iter().map(|&i| &data[i]).collect();
        let b = make_batch(
            &seqs,
            cfg.input_size,
            cfg.output_dim(),
            model.dtype(),
            model.device(),
        )?;
        let w = b
            .weights
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        if w == 0.0 {
            continue;
        }
        let (ys, _) = model.forward(&b.xs, &b.lengths, None)?;
        let (l, _) = super::bptt::loss_and_grad(&ys, &b.target, &b.weights)?;
        sum += l * w;
        weight += w;
    }
    Ok(if weight > 0.0 { sum / weight } else { f64::NAN })
}

/// Trains `model` on `data`. Deterministic: the same model, data and config
/// give the same weights bit for bit (on the same machine and thread count).
/// `cancel` is checked between batches; `progress` is called after every
/// batch and at the end of every epoch.
pub fn train(
    model: &GruModel,
    data: &[Sequence],
    cfg: &TrainConfig,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainOutcome, ModelError> {
    let run_started = Instant::now();
    cfg.validate()?;
    let mcfg = model.config().clone();
    validate_dataset(data, &mcfg, DEFAULT_MAX_SEQ_LEN)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let lens: Vec<usize> = data.iter().map(|s| s.len(mcfg.input_size)).collect();
    let mut all: Vec<usize> = (0..data.len()).collect();
    all.shuffle(&mut rng);
    let n_val = if cfg.validation_fraction > 0.0 && data.len() >= 2 {
        ((data.len() as f64 * cfg.validation_fraction).round() as usize).clamp(1, data.len() - 1)
    } else {
        0
    };
    let (train_idx, val_idx) = all.split_at(data.len() - n_val);

    let mut trainer = Trainer::new(model, cfg)?;
    let batches_per_epoch = train_idx.len().div_ceil(cfg.batch_size);
    let total_steps = batches_per_epoch * cfg.epochs;
    let mut best: Option<(f64, GruModel)> = None;
    let mut since_best = 0;
    let mut step = 0;
    let mut final_train_loss = f64::NAN;
    let mut epochs_run = 0;
    let mut stopped_early = false;
    for epoch in 0..cfg.epochs {
        let started = Instant::now();
        let (mut loss_sum, mut weight_sum, mut seen) = (0.0, 0.0, 0usize);
        let batches = bucketed_batches(train_idx, &lens, cfg.batch_size, &mut rng);
        for (bi, chunk) in batches.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(ModelError::Cancelled);
            }
            let seqs: Vec<&Sequence> = chunk.iter().map(|&i| &data[i]).collect();
            let batch = make_batch(
                &seqs,
                mcfg.input_size,
                mcfg.output_dim(),
                model.dtype(),
                model.device(),
            )?;
            let lr = cfg
                .schedule
                .rate(cfg.learning_rate, epoch, step, total_steps);
            let (loss, norm) = trainer.step(&batch, lr).map_err(|e| match e {
                ModelError::NonFinite(m) => {
                    ModelError::NonFinite(format!("epoch {epoch}, batch {bi}: {m}"))
                }
                other => other,
            })?;
            step += 1;
            let w = batch
                .weights
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            loss_sum += loss * w;
            weight_sum += w;
            seen += chunk.len();
            let (elapsed_seconds, eta_seconds) =
                timing(run_started, epoch, bi, cfg.epochs, batches_per_epoch);
            progress(&Progress {
                epoch: epoch + 1,
                epochs: cfg.epochs,
                batch: bi + 1,
                batches_per_epoch,
                train_loss: loss_sum / weight_sum.max(f64::MIN_POSITIVE),
                validation_loss: None,
                grad_norm: Some(norm),
                sequences_per_second: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
                learning_rate: lr,
                elapsed_seconds,
                eta_seconds,
                epoch_done: false,
            });
        }
        epochs_run = epoch + 1;
        final_train_loss = loss_sum / weight_sum.max(f64::MIN_POSITIVE);
        let val_loss = if val_idx.is_empty() {
            None
        } else {
            Some(evaluate(trainer.model(), data, val_idx, cfg.batch_size)?)
        };
        // Checked before the report: a progress event never carries NaN.
        if let Some(v) = val_loss.filter(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite(format!(
                "epoch {epoch}: validation loss {v}"
            )));
        }
        let last_batch = batches_per_epoch.saturating_sub(1);
        let (elapsed_seconds, eta_seconds) = timing(
            run_started,
            epoch,
            last_batch,
            cfg.epochs,
            batches_per_epoch,
        );
        progress(&Progress {
            epoch: epoch + 1,
            epochs: cfg.epochs,
            batch: last_batch + 1,
            batches_per_epoch,
            train_loss: final_train_loss,
            validation_loss: val_loss,
            grad_norm: None,
            sequences_per_second: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
            learning_rate: cfg
                .schedule
                .rate(cfg.learning_rate, epoch, step, total_steps),
            elapsed_seconds,
            eta_seconds,
            epoch_done: true,
        });
        if let Some(v) = val_loss {
            if best.as_ref().is_none_or(|(b, _)| v < *b) {
                best = Some((v, trainer.snapshot()?));
                since_best = 0;
            } else {
                since_best += 1;
                if matches!(cfg.patience, Some(p) if since_best >= p) {
                    stopped_early = true;
                    break;
                }
            }
        }
    }
    let (best_val_loss, model) = match best {
        // Early stopping keeps the weights of the best validation epoch.
        Some((v, m)) => (Some(v), m),
        None => (None, trainer.snapshot()?),
    };
    Ok(TrainOutcome {
        model,
        epochs_run,
        final_train_loss,
        best_val_loss,
        stopped_early,
    })
}
