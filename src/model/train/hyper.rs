//! Hyper-parameters of a run: the optimizer, the learning-rate schedule,
//! their bounds, and the check a configuration must pass.

use serde::{Deserialize, Serialize};

use crate::model::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum OptimizerKind {
    /// PyTorch `SGD(momentum, weight_decay)`: v ← μv + g + λθ; θ ← θ − lr·v.
    Sgd { momentum: f64 },
    /// Decoupled weight decay Adam (candle-nn's `AdamW`).
    AdamW { beta1: f64, beta2: f64, eps: f64 },
}

impl Default for OptimizerKind {
    fn default() -> Self {
        OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    #[default]
    Constant,
    /// Cosine decay from the base rate to `min_lr` over all optimizer steps.
    Cosine { min_lr: f64 },
    /// Multiply by `gamma` every `every_epochs` epochs.
    Step { every_epochs: usize, gamma: f64 },
}

impl Schedule {
    /// The learning rate at optimizer step `step` of `total`, in epoch `epoch`.
    pub fn rate(&self, base: f64, epoch: usize, step: usize, total: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Cosine { min_lr } => {
                let p = step as f64 / total.max(1) as f64;
                min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * p).cos())
            }
            Schedule::Step {
                every_epochs,
                gamma,
            } => base * gamma.powi((epoch / every_epochs.max(1)) as i32),
        }
    }
}

/// Most epochs one run may ask for: with the dataset limits, a bound on how
/// long one job can hold a training thread.
pub const MAX_EPOCHS: usize = 100_000;

/// Largest mini-batch, in sequences.
pub const MAX_BATCH_SIZE: usize = 65_536;

/// Hyper-parameters of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub optimizer: OptimizerKind,
    pub schedule: Schedule,
    pub weight_decay: f64,
    /// Global-norm clipping threshold (PyTorch `clip_grad_norm_`); None = off.
    pub clip_norm: Option<f64>,
    /// Truncated BPTT window; None = full BPTT.
    pub tbptt_window: Option<usize>,
    /// Fraction of sequences held out for validation (0 = none).
    pub validation_fraction: f64,
    /// Stop after this many epochs without a better validation loss.
    pub patience: Option<usize>,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 32,
            learning_rate: 1e-2,
            optimizer: OptimizerKind::default(),
            schedule: Schedule::Constant,
            weight_decay: 0.0,
            clip_norm: Some(1.0),
            tbptt_window: None,
            validation_fraction: 0.0,
            patience: None,
            seed: 0,
        }
    }
}

/// A hyper-parameter outside its bounds: which one, and the rule it broke
/// (the text names the value too).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{rule}")]
pub struct HyperparameterError {
    pub field: &'static str,
    pub rule: String,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        self.check().map_err(|e| ModelError::Input(e.rule))
    }

    /// The first hyper-parameter outside its bounds, named.
    pub fn check(&self) -> Result<(), HyperparameterError> {
        let bad = |field: &'static str, rule: String| Err(HyperparameterError { field, rule });
        // The weights are f32: a rate or factor f32 cannot hold would make
        // every weight non-finite after one update.
        let f32_range = |v: f64| v.is_finite() && v.abs() <= f32::MAX as f64;
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return bad(
                "epochs",
                format!("epochs {} must be in 1..={MAX_EPOCHS}", self.epochs),
            );
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return bad(
                "batch_size",
                format!(
                    "batch_size {} must be in 1..={MAX_BATCH_SIZE}",
                    self.batch_size
                ),
            );
        }
        if !(f32_range(self.learning_rate) && self.learning_rate >= f32::MIN_POSITIVE as f64) {
            return bad(
                "learning_rate",
                format!(
                    "learning_rate {} must be > 0 and within f32 range",
                    self.learning_rate
                ),
            );
        }
        if !(f32_range(self.weight_decay) && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!(
                    "weight_decay {} must be ≥ 0 and within f32 range",
                    self.weight_decay
                ),
            );
        }
        if matches!(self.clip_norm, Some(c) if !(f32_range(c) && c > 0.0)) {
            return bad(
                "clip_norm",
                format!(
                    "clip_norm {:?} must be > 0 and within f32 range",
                    self.clip_norm
                ),
            );
        }
        match self.optimizer {
            OptimizerKind::Sgd { momentum } => {
                if !(0.0..1.0).contains(&momentum) {
                    return bad("momentum", format!("momentum {momentum} must be in [0, 1)"));
                }
            }
            OptimizerKind::AdamW { beta1, beta2, eps } => {
                if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2)) {
                    return bad(
                        "betas",
                        format!("beta1 {beta1} and beta2 {beta2} must be in [0, 1)"),
                    );
                }
                if !(f32_range(eps) && eps >= f32::MIN_POSITIVE as f64) {
                    return bad("eps", format!("eps {eps} must be > 0 and within f32 range"));
                }
            }
        }
        match self.schedule {
            Schedule::Constant => {}
            Schedule::Cosine { min_lr } => {
                if !(f32_range(min_lr) && (0.0..=self.learning_rate).contains(&min_lr)) {
                    return bad(
                        "min_learning_rate",
                        format!(
                            "cosine min_learning_rate {min_lr} must be in [0, learning_rate {}]",
                            self.learning_rate
                        ),
                    );
                }
            }
            Schedule::Step {
                every_epochs,
                gamma,
            } => {
                if every_epochs == 0 {
                    return bad(
                        "step_every_epochs",
                        "step schedule: step_every_epochs must be at least 1".into(),
                    );
                }
                if !(f32_range(gamma) && gamma > 0.0) {
                    return bad(
                        "step_gamma",
                        format!(
                            "step schedule: step_gamma {gamma} must be > 0 and within f32 range"
                        ),
                    );
                }
            }
        }
        if self.tbptt_window == Some(0) {
            return bad("tbptt_window", "tbptt_window must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad(
                "validation_fraction",
                format!(
                    "validation_fraction {} must be in [0, 1)",
                    self.validation_fraction
                ),
            );
        }
        Ok(())
    }
}
