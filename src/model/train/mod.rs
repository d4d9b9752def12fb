//! The training loop: data checks, length-bucketed shuffled mini-batches,
//! epochs, a validation split, early stopping, optimizers and learning-rate
//! schedules, progress reports and cancellation. What the server's training
//! endpoint runs. Gradients come from [`super::bptt`]; the optimizer step is
//! candle-nn's `AdamW` fed through a `GradStore`, or SGD with momentum
//! (candle-nn's `SGD` has no momentum, so that one is written here).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::bptt::{Batch, Gradients, Target};
use super::config::{ModelConfig, Task};
use super::error::ModelError;
use super::layer::{GruLayer, LayerParams};
use super::network::{GruModel, Head};

/// What one sequence is trained towards.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqTarget {
    /// `len × O` real values, row-major (regression at every step).
    Values(Vec<f32>),
    /// One class label per step (`len` labels).
    Classes(Vec<u32>),
    /// One class label for the whole sequence, at its last step.
    Class(u32),
}

/// One training sequence: `len × I` inputs (row-major) and its target.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub inputs: Vec<f32>,
    pub target: SeqTarget,
    /// Optional per-step loss weights (`len` values ≥ 0); zero = no target at that step.
    /// With [`SeqTarget::Class`] only the last step may be non-zero.
    pub weights: Option<Vec<f32>>,
}

impl Sequence {
    pub fn len(&self, input_size: usize) -> usize {
        self.inputs.len() / input_size.max(1)
    }
}

/// Largest sequence length accepted by default (bounds memory per batch).
pub const DEFAULT_MAX_SEQ_LEN: usize = 100_000;

/// Checks a dataset against a model config, naming the sequence and field of
/// the first problem.
pub fn validate_dataset(
    data: &[Sequence],
    cfg: &ModelConfig,
    max_len: usize,
) -> Result<(), ModelError> {
    if data.is_empty() {
        return Err(ModelError::Input("the dataset is empty".into()));
    }
    let (i, o) = (cfg.input_size, cfg.output_dim());
    for (k, s) in data.iter().enumerate() {
        let bad = |m: String| Err(ModelError::Input(format!("sequence {k}: {m}")));
        if s.inputs.is_empty() || s.inputs.len() % i != 0 {
            return bad(format!(
                "inputs has {} values, not a positive multiple of input_size {i}",
                s.inputs.len()
            ));
        }
        let len = s.inputs.len() / i;
        if len > max_len {
            return bad(format!("length {len} is over the limit {max_len}"));
        }
        if let Some(p) = s.inputs.iter().position(|v| !v.is_finite()) {
            return bad(format!(
                "inputs[{p}] (step {}, feature {}) is not finite",
                p / i,
                p % i
            ));
        }
        match (&s.target, cfg.task) {
            (SeqTarget::Values(v), Task::Regression) => {
                if v.len() != len * o {
                    return bad(format!(
                        "targets has {} values, expected length {len} × output {o} = {}",
                        v.len(),
                        len * o
                    ));
                }
                if let Some(p) = v.iter().position(|v| !v.is_finite()) {
                    return bad(format!("targets[{p}] is not finite"));
                }
            }
            (SeqTarget::Classes(l), Task::ClassifyPerStep) => {
                if l.len() != len {
                    return bad(format!("labels has {} entries for {len} steps", l.len()));
                }
                if let Some(p) = l.iter().position(|&c| c as usize >= o) {
                    return bad(format!("labels[{p}] = {} is out of range 0..{o}", l[p]));
                }
            }
            (SeqTarget::Class(c), Task::ClassifyLast) => {
                if *c as usize >= o {
                    return bad(format!("label {c} is out of range 0..{o}"));
                }
            }
            (t, task) => {
                let kind = match t {
                    SeqTarget::Values(_) => "real targets",
                    SeqTarget::Classes(_) => "per-step labels",
                    SeqTarget::Class(_) => "one label",
                };
                return bad(format!("has {kind} but the model's task is {task:?}"));
            }
        }
        if let Some(w) = &s.weights {
            if w.len() != len {
                return bad(format!("weights has {} entries for {len} steps", w.len()));
            }
            if let Some(p) = w.iter().position(|v| !v.is_finite() || *v < 0.0) {
                return bad(format!("weights[{p}] = {} must be finite and ≥ 0", w[p]));
            }
            // One label is scored at the last step only: a weight before it
            // would score a step that has no label.
            if matches!(s.target, SeqTarget::Class(_)) {
                if let Some(p) = w[..len - 1].iter().position(|v| *v != 0.0) {
                    return bad(format!(
                        "weights[{p}] = {} is before the last step ({}): a sequence with one label \
                         (TASK_CLASSIFY_LAST) is scored at its last step only, so its weights \
                         must be 0 at every earlier step",
                        w[p],
                        len - 1
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Builds a padded batch from sequences (inputs zero-padded to the longest).
/// A one-label sequence is weighted at its last step only (its own weight
/// there, 1 without weights): the other steps have no label (the label
/// tensor holds 0 there), and [`validate_dataset`] refuses weights on them.
pub fn make_batch(
    seqs: &[&Sequence],
    input_size: usize,
    output_dim: usize,
    dtype: DType,
    device: &Device,
) -> Result<Batch, ModelError> {
    let lengths: Vec<usize> = seqs.iter().map(|s| s.len(input_size)).collect();
    let t_max = lengths.iter().copied().max().unwrap_or(0);
    let b = seqs.len();
    let mut xs = vec![0f32; b * t_max * input_size];
    let mut w = vec![0f32; b * t_max];
    for (r, s) in seqs.iter().enumerate() {
        let off = r * t_max * input_size;
        xs[off..off + s.inputs.len()].copy_from_slice(&s.inputs);
        let len = lengths[r];
        for t in 0..len {
            w[r * t_max + t] = match (&s.weights, &s.target) {
                (_, SeqTarget::Class(_)) if t + 1 < len => 0.0,
                (Some(ws), _) => ws[t],
                (None, _) => 1.0,
            };
        }
    }
    let target = match seqs.first().map(|s| &s.target) {
        Some(SeqTarget::Values(_)) => {
            let mut y = vec![0f32; b * t_max * output_dim];
            for (r, s) in seqs.iter().enumerate() {
                if let SeqTarget::Values(v) = &s.target {
                    let off = r * t_max * output_dim;
                    y[off..off + v.len()].copy_from_slice(v);
                }
            }
            Target::Regression(
                Tensor::from_vec(y, (b, t_max, output_dim), device)?.to_dtype(dtype)?,
            )
        }
        _ => {
            let mut l = vec![0u32; b * t_max];
            for (r, s) in seqs.iter().enumerate() {
                match &s.target {
                    SeqTarget::Classes(c) => l[r * t_max..r * t_max + c.len()].copy_from_slice(c),
                    SeqTarget::Class(c) => l[r * t_max + lengths[r] - 1] = *c,
                    SeqTarget::Values(_) => {}
                }
            }
            Target::Classes(Tensor::from_vec(l, (b, t_max), device)?)
        }
    };
    Ok(Batch {
        xs: Tensor::from_vec(xs, (b, t_max, input_size), device)?.to_dtype(dtype)?,
        lengths,
        target,
        weights: Tensor::from_vec(w, (b, t_max), device)?.to_dtype(dtype)?,
    })
}

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

impl TrainConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Input(m));
        // The weights are f32: a rate or factor f32 cannot hold would make
        // every weight non-finite after one update.
        let f32_range = |v: f64| v.is_finite() && v.abs() <= f32::MAX as f64;
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return bad(format!(
                "epochs {} must be in 1..={MAX_EPOCHS}",
                self.epochs
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return bad(format!(
                "batch_size {} must be in 1..={MAX_BATCH_SIZE}",
                self.batch_size
            ));
        }
        if !(f32_range(self.learning_rate) && self.learning_rate >= f32::MIN_POSITIVE as f64) {
            return bad(format!(
                "learning_rate {} must be > 0 and within f32 range",
                self.learning_rate
            ));
        }
        if !(f32_range(self.weight_decay) && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay {} must be ≥ 0 and within f32 range",
                self.weight_decay
            ));
        }
        if matches!(self.clip_norm, Some(c) if !(f32_range(c) && c > 0.0)) {
            return bad(format!(
                "clip_norm {:?} must be > 0 and within f32 range",
                self.clip_norm
            ));
        }
        match self.optimizer {
            OptimizerKind::Sgd { momentum } => {
                if !(0.0..1.0).contains(&momentum) {
                    return bad(format!("momentum {momentum} must be in [0, 1)"));
                }
            }
            OptimizerKind::AdamW { beta1, beta2, eps } => {
                if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2)) {
                    return bad(format!("beta1 {beta1} and beta2 {beta2} must be in [0, 1)"));
                }
                if !(f32_range(eps) && eps >= f32::MIN_POSITIVE as f64) {
                    return bad(format!("eps {eps} must be > 0 and within f32 range"));
                }
            }
        }
        match self.schedule {
            Schedule::Constant => {}
            Schedule::Cosine { min_lr } => {
                if !(f32_range(min_lr) && (0.0..=self.learning_rate).contains(&min_lr)) {
                    return bad(format!(
                        "cosine min_learning_rate {min_lr} must be in [0, learning_rate {}]",
                        self.learning_rate
                    ));
                }
            }
            Schedule::Step {
                every_epochs,
                gamma,
            } => {
                if every_epochs == 0 {
                    return bad("step schedule: step_every_epochs must be at least 1".into());
                }
                if !(f32_range(gamma) && gamma > 0.0) {
                    return bad(format!(
                        "step schedule: step_gamma {gamma} must be > 0 and within f32 range"
                    ));
                }
            }
        }
        if self.tbptt_window == Some(0) {
            return bad("tbptt_window must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad(format!(
                "validation_fraction {} must be in [0, 1)",
                self.validation_fraction
            ));
        }
        Ok(())
    }
}

/// One progress report (per batch, and at each epoch's end with `val_loss`).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub epoch: usize,
    pub epochs: usize,
    pub batch: usize,
    pub batches_per_epoch: usize,
    /// Mean training loss over the epoch so far.
    pub train_loss: f64,
    /// Set on the end-of-epoch report when there is a validation split.
    pub val_loss: Option<f64>,
    /// Global gradient norm of the last batch, before clipping.
    pub grad_norm: f64,
    pub seqs_per_sec: f64,
    pub learning_rate: f64,
    pub epoch_done: bool,
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

enum Opt {
    AdamW(AdamW),
    Sgd {
        momentum: f64,
        weight_decay: f64,
        lr: f64,
        velocity: Vec<Option<Tensor>>,
    },
}

impl Opt {
    fn set_lr(&mut self, lr: f64) {
        match self {
            Opt::AdamW(a) => a.set_learning_rate(lr),
            Opt::Sgd { lr: l, .. } => *l = lr,
        }
    }

    fn step(&mut self, vars: &[Var], grads: &[Tensor]) -> Result<(), ModelError> {
        match self {
            Opt::AdamW(a) => {
                let mut store = GradStore::default();
                for (v, g) in vars.iter().zip(grads) {
                    store.insert(v.as_tensor(), g.clone());
                }
                a.step(&store)?;
            }
            Opt::Sgd {
                momentum,
                weight_decay,
                lr,
                velocity,
            } => {
                for ((v, g), vel) in vars.iter().zip(grads).zip(velocity.iter_mut()) {
                    let mut d = g.clone();
                    if *weight_decay != 0.0 {
                        d = (d + (v.as_tensor() * *weight_decay)?)?;
                    }
                    if *momentum != 0.0 {
                        d = match vel.take() {
                            Some(prev) => ((prev * *momentum)? + d)?,
                            None => d,
                        };
                        *vel = Some(d.clone());
                    }
                    v.set(&(v.as_tensor() - (d * *lr)?)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Trainable copies of a model's parameters (layers' w_ih, w_hh, b_ih, b_hh…, head w, b).
fn to_vars(model: &GruModel) -> Result<Vec<Var>, ModelError> {
    let mut v = Vec::new();
    for l in model.layers() {
        let p = l.params();
        for t in [p.w_ih, p.w_hh, p.b_ih, p.b_hh] {
            v.push(Var::from_tensor(&t.copy()?)?);
        }
    }
    if let Some(h) = model.head() {
        v.push(Var::from_tensor(&h.w.copy()?)?);
        v.push(Var::from_tensor(&h.b.copy()?)?);
    }
    Ok(v)
}

/// A plain-tensor model from the variables. `deep` copies the storage (for
/// snapshots and the result); otherwise the tensors share it with the vars
/// and only live until the next optimizer step. Never `Var`s: inference on a
/// `Var` records an autograd graph.
fn from_vars(like: &GruModel, vars: &[Var], deep: bool) -> Result<GruModel, ModelError> {
    let t = |k: usize| -> Result<Tensor, ModelError> {
        let d = vars[k].as_tensor().detach();
        Ok(if deep { d.copy()? } else { d })
    };
    let cfg = like.config().clone();
    let layers = (0..cfg.num_layers)
        .map(|k| {
            GruLayer::new(
                cfg.reset_mode,
                LayerParams {
                    w_ih: t(4 * k)?,
                    w_hh: t(4 * k + 1)?,
                    b_ih: t(4 * k + 2)?,
                    b_hh: t(4 * k + 3)?,
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = 4 * cfg.num_layers;
    let head = match cfg.output_size {
        Some(_) => Some(Head {
            w: t(n)?,
            b: t(n + 1)?,
        }),
        None => None,
    };
    GruModel::new(cfg, layers, head)
}

fn grad_tensors(g: &Gradients) -> Vec<Tensor> {
    g.tensors().into_iter().cloned().collect()
}

/// How many batches are grouped, sorted by length and cut, so batches hold
/// sequences of similar length (less padding) while the order stays random.
const BUCKET_BATCHES: usize = 50;

fn bucketed_batches(
    idx: &[usize],
    lens: &[usize],
    batch_size: usize,
    rng: &mut rand::rngs::StdRng,
) -> Vec<Vec<usize>> {
    let mut idx = idx.to_vec();
    idx.shuffle(rng);
    let mut batches = Vec::new();
    for chunk in idx.chunks(batch_size * BUCKET_BATCHES) {
        let mut chunk = chunk.to_vec();
        chunk.sort_by_key(|&i| lens[i]);
        batches.extend(chunk.chunks(batch_size).map(|c| c.to_vec()));
    }
    batches.shuffle(rng);
    batches
}

/// One model under training: trainable copies of its parameters, the
/// optimizer, and a plain-tensor view for the forward pass. `step` is one
/// training step (forward, loss, analytic backward, clipping, update).
pub struct Trainer {
    like: GruModel,
    vars: Vec<Var>,
    opt: Opt,
    current: GruModel,
    clip_norm: Option<f64>,
    window: Option<usize>,
}

impl Trainer {
    pub fn new(model: &GruModel, cfg: &TrainConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let vars = to_vars(model)?;
        let opt = match cfg.optimizer {
            OptimizerKind::AdamW { beta1, beta2, eps } => Opt::AdamW(AdamW::new(
                vars.clone(),
                ParamsAdamW {
                    lr: cfg.learning_rate,
                    beta1,
                    beta2,
                    eps,
                    weight_decay: cfg.weight_decay,
                },
            )?),
            OptimizerKind::Sgd { momentum } => Opt::Sgd {
                momentum,
                weight_decay: cfg.weight_decay,
                lr: cfg.learning_rate,
                velocity: vec![None; vars.len()],
            },
        };
        let current = from_vars(model, &vars, false)?;
        Ok(Trainer {
            like: model.clone(),
            vars,
            opt,
            current,
            clip_norm: cfg.clip_norm,
            window: cfg.tbptt_window,
        })
    }

    /// The model as of the last step (shares storage with the trainer: use
    /// [`Trainer::snapshot`] to keep it).
    pub fn model(&self) -> &GruModel {
        &self.current
    }

    /// An independent copy of the current weights.
    pub fn snapshot(&self) -> Result<GruModel, ModelError> {
        from_vars(&self.like, &self.vars, true)
    }

    /// One step at learning rate `lr`; returns (loss, gradient norm before clipping).
    /// Non-finite loss or gradients leave the weights untouched and are an error.
    pub fn step(&mut self, batch: &Batch, lr: f64) -> Result<(f64, f64), ModelError> {
        let (loss, mut grads) = self.current.loss_and_gradients(batch, None, self.window)?;
        let norm = match self.clip_norm {
            Some(c) => grads.clip_global_norm(c)?,
            None => grads.global_norm()?,
        };
        if !loss.is_finite() || !norm.is_finite() {
            return Err(ModelError::NonFinite(format!(
                "loss {loss}, gradient norm {norm}; lower the learning rate or set clip_norm"
            )));
        }
        self.opt.set_lr(lr);
        self.opt.step(&self.vars, &grad_tensors(&grads))?;
        self.current = from_vars(&self.like, &self.vars, false)?;
        Ok((loss, norm))
    }
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
            progress(&Progress {
                epoch,
                epochs: cfg.epochs,
                batch: bi,
                batches_per_epoch,
                train_loss: loss_sum / weight_sum.max(f64::MIN_POSITIVE),
                val_loss: None,
                grad_norm: norm,
                seqs_per_sec: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
                learning_rate: lr,
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
        progress(&Progress {
            epoch,
            epochs: cfg.epochs,
            batch: batches_per_epoch.saturating_sub(1),
            batches_per_epoch,
            train_loss: final_train_loss,
            val_loss,
            grad_norm: f64::NAN,
            seqs_per_sec: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
            learning_rate: cfg
                .schedule
                .rate(cfg.learning_rate, epoch, step, total_steps),
            epoch_done: true,
        });
        if let Some(v) = val_loss {
            if !v.is_finite() {
                return Err(ModelError::NonFinite(format!(
                    "epoch {epoch}: validation loss {v}"
                )));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bptt::loss_and_grad;

    fn one_label(weights: Option<Vec<f32>>) -> Sequence {
        Sequence {
            inputs: vec![0.1, -0.2, 0.3],
            target: SeqTarget::Class(2),
            weights,
        }
    }

    /// A one-label sequence has no label before its last step (the label
    /// tensor holds 0 there): whatever weights `make_batch` is handed, the loss
    /// must not move with class 0's logit at those steps.
    #[test]
    fn a_one_label_loss_ignores_the_logits_of_unlabeled_steps() {
        let seqs = [
            one_label(None),
            one_label(Some(vec![0.0, 0.0, 1.0])),
            one_label(Some(vec![1.0, 1.0, 1.0])),
        ];
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let b = make_batch(&refs, 1, 3, DType::F64, &Device::Cpu).unwrap();
        // Logits [B = 3, T = 3, O = 3]: class 0's at steps 0 and 1 is `v`;
        // the last step's are (0, 0, 0.5) for every row.
        let logits = |v: f64| {
            let mut y = vec![0f64; 27];
            for r in 0..3 {
                y[(r * 3) * 3] = v;
                y[(r * 3 + 1) * 3] = v;
                y[(r * 3 + 2) * 3 + 2] = 0.5;
            }
            Tensor::from_vec(y, (3, 3, 3), &Device::Cpu).unwrap()
        };
        let (low, _) = loss_and_grad(&logits(-5.0), &b.target, &b.weights).unwrap();
        let (high, _) = loss_and_grad(&logits(5.0), &b.target, &b.weights).unwrap();
        assert_eq!(low, high, "the loss depends on unlabeled steps' logits");
        // And it is class 2's cross-entropy at the last step.
        let want = (2.0 + 0.5f64.exp()).ln() - 0.5;
        assert!((low - want).abs() < 1e-12, "{low} vs {want}");
    }
}
