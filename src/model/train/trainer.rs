//! One model under training: trainable copies of its parameters and the
//! optimizer step (candle-nn's `AdamW` fed through a `GradStore`, or SGD
//! with momentum, which candle-nn's `SGD` lacks).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW};

use super::hyper::{OptimizerKind, TrainConfig};
use crate::model::bptt::{Batch, Gradients};
use crate::model::error::ModelError;
use crate::model::layer::{GruLayer, LayerParams};
use crate::model::network::{GruModel, Head};

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
