//! The analytic BPTT gradients against two independent references:
//! central finite differences of the loss in f64 (relative error ≤ 1e-6),
//! and candle's autograd on the same graph built from candle ops.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use gru_serve::model::bptt::{loss_and_grad, Batch, Gradients, Target};
use gru_serve::model::train::{make_batch, validate_dataset, SeqTarget, Sequence};
use gru_serve::model::{
    Backend, GruLayer, GruModel, Head, LayerParams, ModelConfig, Precision, ResetMode, Task,
};

const B: usize = 3;
const T: usize = 6;
const I: usize = 3;
const H: usize = 4;
const O: usize = 3;
const LENS: [usize; B] = [6, 3, 5];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Mse,
    ClassPerStep,
    ClassLast,
}

fn model(mode: ResetMode) -> GruModel {
    let cfg = ModelConfig::new(I, H, 2)
        .with_head(O)
        .with_reset_mode(mode)
        .with_task(Task::Regression)
        .with_dtype(Precision::F64);
    // Scale up the init so gates are far from linear and gradients are not tiny.
    let m = GruModel::init(cfg.clone(), 3, &Device::Cpu).unwrap();
    set_params(
        &m,
        &params(&m)
            .iter()
            .map(|t| (t * 2.0).unwrap())
            .collect::<Vec<_>>(),
    )
}

fn params(m: &GruModel) -> Vec<Tensor> {
    let mut v = Vec::new();
    for l in m.layers() {
        let p = l.params();
        v.extend([p.w_ih, p.w_hh, p.b_ih, p.b_hh]);
    }
    let h = m.head().unwrap();
    v.extend([h.w.clone(), h.b.clone()]);
    v
}

fn set_params(m: &GruModel, p: &[Tensor]) -> GruModel {
    let layers = (0..m.layers().len())
        .map(|k| {
            GruLayer::new(
                m.config().reset_mode,
                LayerParams {
                    w_ih: p[4 * k].clone(),
                    w_hh: p[4 * k + 1].clone(),
                    b_ih: p[4 * k + 2].clone(),
                    b_hh: p[4 * k + 3].clone(),
                },
            )
            .unwrap()
        })
        .collect();
    let n = p.len();
    let head = Head {
        w: p[n - 2].clone(),
        b: p[n - 1].clone(),
    };
    GruModel::new(m.config().clone(), layers, Some(head))
        .unwrap()
        .with_backend(Backend::Reference)
}

fn grad_list(g: &Gradients) -> Vec<Tensor> {
    g.tensors().into_iter().cloned().collect()
}

fn batch(kind: Kind) -> (Batch, Tensor) {
    let xs = common::rand_tensor(&[B, T, I], 21, 1.5)
        .to_dtype(DType::F64)
        .unwrap();
    // Zero the padded inputs, as a client's padded batch would have.
    let mask: Vec<f64> = LENS
        .iter()
        .flat_map(|&l| (0..T).map(move |t| if t < l { 1.0 } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (B, T), &Device::Cpu).unwrap();
    let xs = xs.broadcast_mul(&mask.unsqueeze(2).unwrap()).unwrap();
    let h0 = common::rand_tensor(&[2, B, H], 22, 0.8)
        .to_dtype(DType::F64)
        .unwrap();
    let (target, weights) = match kind {
        Kind::Mse => {
            let t = common::rand_tensor(&[B, T, O], 23, 1.0)
                .to_dtype(DType::F64)
                .unwrap();
            // Only some steps carry targets, with unequal weights.
            let w: Vec<f64> = (0..B * T).map(|k| [1.0, 0.0, 2.5][k % 3]).collect();
            (
                Target::Regression(t),
                Tensor::from_vec(w, (B, T), &Device::Cpu).unwrap(),
            )
        }
        Kind::ClassPerStep => {
            let l: Vec<u32> = (0..B * T).map(|k| (k * 7 % O) as u32).collect();
            let t = Tensor::from_vec(l, (B, T), &Device::Cpu).unwrap();
            (Target::Classes(t), mask.clone())
        }
        Kind::ClassLast => {
            let l: Vec<u32> = (0..B * T).map(|k| (k % O) as u32).collect();
            let t = Tensor::from_vec(l, (B, T), &Device::Cpu).unwrap();
            let w: Vec<f64> = LENS
                .iter()
                .flat_map(|&len| (0..T).map(move |t| if t + 1 == len { 1.0 } else { 0.0 }))
                .collect();
            (
                Target::Classes(t),
                Tensor::from_vec(w, (B, T), &Device::Cpu).unwrap(),
            )
        }
    };
    let batch = Batch {
        xs,
        lengths: LENS.to_vec(),
        target,
        weights,
    };
    (batch, h0)
}

/// The truncated objective: Σ over windows of the window's loss with the
/// state entering the window held at its value under the base parameters.
/// With `window` = None it is the full loss.
fn objective(
    m: &GruModel,
    base: &GruModel,
    batch: &Batch,
    h0: &Tensor,
    window: Option<usize>,
) -> f64 {
    let k = window.unwrap_or(T);
    let weights = batch.weights.clone();
    let total_w: f64 = weights
        .mul(&valid_mask())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let mut total = 0.0;
    let mut t0 = 0;
    while t0 < T {
        // State entering the window: the base model's, a constant.
        let state = if t0 == 0 {
            h0.clone()
        } else {
            let lens: Vec<usize> = LENS.iter().map(|&l| l.min(t0)).collect();
            base.forward(&batch.xs.narrow(1, 0, t0).unwrap(), &lens, Some(h0))
                .unwrap()
                .1
        };
        let rows: Vec<u32> = (0..B).filter(|&r| LENS[r] > t0).map(|r| r as u32).collect();
        let idx = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
        let width = k.min(T - t0);
        let sel = |t: &Tensor| {
            t.index_select(&idx, 0)
                .unwrap()
                .narrow(1, t0, width)
                .unwrap()
        };
        let lens: Vec<usize> = rows
            .iter()
            .map(|&r| (LENS[r as usize] - t0).min(width))
            .collect();
        let st = state.index_select(&idx, 1).unwrap();
        let (ys, _) = m.forward(&sel(&batch.xs), &lens, Some(&st)).unwrap();
        let target = match &batch.target {
            Target::Regression(t) => Target::Regression(sel(t)),
            Target::Classes(t) => Target::Classes(sel(t)),
        };
        let w = sel(&weights.mul(&valid_mask()).unwrap());
        let wsum = w.sum_all().unwrap().to_scalar::<f64>().unwrap();
        if wsum > 0.0 {
            let (l, _) = loss_and_grad(&ys, &target, &w).unwrap();
            total += l * wsum / total_w;
        }
        t0 += k;
    }
    total
}

fn valid_mask() -> Tensor {
    let m: Vec<f64> = LENS
        .iter()
        .flat_map(|&l| (0..T).map(move |t| if t < l { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (B, T), &Device::Cpu).unwrap()
}

fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs())
}

/// Relative error of an analytic gradient entry against its finite
/// difference; entries ~0 on both sides count as exact. Infinite when either
/// is not finite (`f64::max` would let a NaN through the ~0 test).
fn grad_err(analytic: f64, fd: f64) -> f64 {
    if !(analytic.is_finite() && fd.is_finite()) {
        return f64::INFINITY;
    }
    if analytic.abs() < 1e-10 && fd.abs() < 1e-10 {
        return 0.0;
    }
    rel_err(analytic, fd)
}

fn five_point(f: &dyn Fn(f64) -> f64, h: f64) -> f64 {
    (-f(2.0 * h) + 8.0 * f(h) - 8.0 * f(-h) + f(-2.0 * h)) / (12.0 * h)
}

fn check_finite_differences(mode: ResetMode, kind: Kind, window: Option<usize>) {
    let m = model(mode);
    let (batch, h0) = batch(kind);
    check_fd(&m, &batch, &h0, &format!("{mode:?} {kind:?}"), window);
}

/// The analytic gradients of `batch`'s loss (lengths `LENS`, `T` steps) against
/// the fused backward and fourth-order central finite differences.
fn check_fd(m: &GruModel, batch: &Batch, h0: &Tensor, what: &str, window: Option<usize>) {
    let (loss, grads) = m.loss_and_gradients(batch, Some(h0), window).unwrap();
    // The fused CPU backward equals the candle-op backward (so the finite
    // differences below check both).
    let fused = m.clone().with_backend(Backend::Fused);
    let (loss_f, gf) = fused.loss_and_gradients(batch, Some(h0), window).unwrap();
    assert!((loss - loss_f).abs() < 1e-13);
    for (k, (a, b)) in grad_list(&grads).iter().zip(grad_list(&gf)).enumerate() {
        let d = common::max_abs_diff(a, &b);
        assert!(
            d < 1e-12,
            "{what} {window:?}: fused param {k} differs by {d:e}"
        );
    }
    assert!(common::max_abs_diff(&grads.h0, &gf.h0) < 1e-12);
    let base = params(m);
    let analytic = grad_list(&grads);
    // Fourth-order central differences: truncation O(h⁴) and rounding ~1e-16/h
    // both stay near 1e-13, so even small gradient entries are checked to 1e-6.
    let eps = 1e-3;
    let mut worst = 0f64;
    for (p, (theta, g)) in base.iter().zip(&analytic).enumerate() {
        let flat = theta.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let gflat = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for e in 0..flat.len() {
            let eval = |delta: f64| {
                let mut v = flat.clone();
                v[e] += delta;
                let mut ps = base.clone();
                ps[p] = Tensor::from_vec(v, theta.dims(), &Device::Cpu).unwrap();
                objective(&set_params(m, &ps), m, batch, h0, window)
            };
            let fd = five_point(&eval, eps);
            let err = grad_err(gflat[e], fd);
            assert!(
                err <= 1e-6,
                "{what} window {window:?}: param {p} elem {e}: analytic {} vs FD {fd} (rel {err:e})",
                gflat[e]
            );
            worst = worst.max(err);
        }
    }
    // ∂L/∂h0 (full BPTT only reaches h0 through every step; truncated via the first window).
    let h0f = h0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let gh0 = grads.h0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for e in 0..h0f.len() {
        let eval = |delta: f64| {
            let mut v = h0f.clone();
            v[e] += delta;
            let h = Tensor::from_vec(v, h0.dims(), &Device::Cpu).unwrap();
            // The window-entry states are constants from the unperturbed h0.
            let k = window.unwrap_or(T);
            let first = Batch {
                xs: batch.xs.narrow(1, 0, k.min(T)).unwrap(),
                lengths: LENS.iter().map(|&l| l.min(k)).collect(),
                target: match &batch.target {
                    Target::Regression(t) => Target::Regression(t.narrow(1, 0, k.min(T)).unwrap()),
                    Target::Classes(t) => Target::Classes(t.narrow(1, 0, k.min(T)).unwrap()),
                },
                weights: batch.weights.narrow(1, 0, k.min(T)).unwrap(),
            };
            // Only the first window depends on h0.
            let total_w: f64 = batch
                .weights
                .mul(&valid_mask())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let vm = valid_mask().narrow(1, 0, k.min(T)).unwrap();
            let w = first.weights.mul(&vm).unwrap();
            let wsum = w.sum_all().unwrap().to_scalar::<f64>().unwrap();
            let (ys, _) = m.forward(&first.xs, &first.lengths, Some(&h)).unwrap();
            if wsum == 0.0 {
                return 0.0;
            }
            loss_and_grad(&ys, &first.target, &w).unwrap().0 * wsum / total_w
        };
        let fd = five_point(&eval, eps);
        let err = grad_err(gh0[e], fd);
        assert!(
            err <= 1e-6,
            "{what} {window:?}: dL/dh0[{e}] {} vs FD {fd}",
            gh0[e]
        );
    }
    eprintln!("{what} window {window:?}: worst relative error {worst:e}");
}

#[test]
fn finite_differences_after_matmul() {
    for kind in [Kind::Mse, Kind::ClassPerStep, Kind::ClassLast] {
        for window in [None, Some(2)] {
            check_finite_differences(ResetMode::AfterMatmul, kind, window);
        }
    }
}

#[test]
fn finite_differences_before_matmul() {
    for kind in [Kind::Mse, Kind::ClassPerStep, Kind::ClassLast] {
        for window in [None, Some(4)] {
            check_finite_differences(ResetMode::BeforeMatmul, kind, window);
        }
    }
}

/// Sequences as the training endpoint gets them (`Sequence` with optional
/// `step_weights`, lengths `LENS`), for `task`: unequal weights, a zero
/// weight, and one sequence without weights.
fn weighted_sequences(task: Task) -> Vec<Sequence> {
    let xs = common::rand_tensor(&[B, T, I], 41, 1.5);
    let targets = common::rand_tensor(&[B, T, O], 42, 1.0);
    LENS.iter()
        .enumerate()
        .map(|(r, &len)| {
            let inputs = xs.get(r).unwrap().narrow(0, 0, len).unwrap();
            let inputs = inputs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let target = match task {
                Task::Regression => {
                    let t = targets.get(r).unwrap().narrow(0, 0, len).unwrap();
                    SeqTarget::Values(t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                }
                Task::ClassifyPerStep => {
                    SeqTarget::Classes((0..len).map(|t| ((r + 2 * t) % O) as u32).collect())
                }
                Task::ClassifyLast => SeqTarget::Class((r % O) as u32),
            };
            let weights = match (task, r) {
                (_, 1) => None,
                // One label: weighted at the last step only.
                (Task::ClassifyLast, _) => Some(
                    (0..len)
                        .map(|t| if t + 1 == len { 0.5 + r as f32 } else { 0.0 })
                        .collect(),
                ),
                _ => Some(
                    (0..len)
                        .map(|t| [0.5, 0.0, 2.0, 1.0][(t + r) % 4])
                        .collect(),
                ),
            };
            Sequence {
                inputs,
                target,
                weights,
            }
        })
        .collect()
}

/// The weighted loss computed directly from the sequences (not from the
/// batch's weight and label tensors): Σ w·ℓ / Σ w over the scored steps, ℓ the
/// squared error averaged over outputs, or the cross-entropy.
fn loss_from_sequences(m: &GruModel, seqs: &[Sequence], xs: &Tensor, h0: &Tensor) -> f64 {
    let (ys, _) = m.forward(xs, &LENS, Some(h0)).unwrap();
    let ys = ys.to_vec3::<f64>().unwrap();
    let (mut sum, mut total) = (0.0, 0.0);
    for (r, s) in seqs.iter().enumerate() {
        let len = LENS[r];
        let w = |t: usize| s.weights.as_ref().map_or(1.0, |w| w[t] as f64);
        let ce = |y: &[f64], c: usize| {
            let m = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + y.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - y[c]
        };
        match &s.target {
            SeqTarget::Values(v) => {
                for t in 0..len {
                    let se: f64 = (0..O)
                        .map(|o| (ys[r][t][o] - v[t * O + o] as f64).powi(2))
                        .sum();
                    sum += w(t) * se / O as f64;
                    total += w(t);
                }
            }
            SeqTarget::Classes(l) => {
                for t in 0..len {
                    sum += w(t) * ce(&ys[r][t], l[t] as usize);
                    total += w(t);
                }
            }
            SeqTarget::Class(c) => {
                sum += w(len - 1) * ce(&ys[r][len - 1], *c as usize);
                total += w(len - 1);
            }
        }
    }
    sum / total
}

/// The training path with per-step weights (`make_batch` from `Sequence`s):
/// its loss equals the weighted loss computed from the sequences themselves,
/// and its analytic gradients match finite differences, for all three tasks,
/// full BPTT and a window.
#[test]
fn finite_differences_on_weighted_sequences_for_every_task() {
    for mode in [ResetMode::AfterMatmul, ResetMode::BeforeMatmul] {
        let m = model(mode);
        let h0 = common::rand_tensor(&[2, B, H], 43, 0.8)
            .to_dtype(DType::F64)
            .unwrap();
        for task in [Task::Regression, Task::ClassifyPerStep, Task::ClassifyLast] {
            let seqs = weighted_sequences(task);
            let cfg = m.config().clone().with_task(task);
            validate_dataset(&seqs, &cfg, 100).unwrap();
            let refs: Vec<&Sequence> = seqs.iter().collect();
            let batch = make_batch(&refs, I, O, DType::F64, &Device::Cpu).unwrap();
            let (loss, _) = m.loss_and_gradients(&batch, Some(&h0), None).unwrap();
            let want = loss_from_sequences(&m, &seqs, &batch.xs, &h0);
            assert!(
                (loss - want).abs() <= 1e-12 * want.abs(),
                "{mode:?} {task:?}: loss {loss} vs {want} from the sequences"
            );
            for window in [None, Some(2)] {
                check_fd(
                    &m,
                    &batch,
                    &h0,
                    &format!("{mode:?} {task:?} weighted"),
                    window,
                );
            }
        }
    }
}

/// Same gradients as candle's autograd through the reference (candle-op) forward.
#[test]
fn matches_candle_autograd() {
    for mode in [ResetMode::AfterMatmul, ResetMode::BeforeMatmul] {
        for kind in [Kind::Mse, Kind::ClassPerStep] {
            let m = model(mode);
            let (batch, h0) = batch(kind);
            let (_, grads) = m.loss_and_gradients(&batch, Some(&h0), None).unwrap();
            let vars: Vec<Var> = params(&m)
                .iter()
                .map(|t| Var::from_tensor(t).unwrap())
                .collect();
            let h0v = Var::from_tensor(&h0).unwrap();
            let tracked = set_params(
                &m,
                &vars
                    .iter()
                    .map(|v| v.as_tensor().clone())
                    .collect::<Vec<_>>(),
            );
            let (ys, _) = tracked
                .forward(&batch.xs, &LENS, Some(h0v.as_tensor()))
                .unwrap();
            let w = batch.weights.mul(&valid_mask()).unwrap();
            let total = w.sum_all().unwrap().to_scalar::<f64>().unwrap();
            let loss = match &batch.target {
                Target::Regression(t) => ((&ys - t).unwrap().sqr().unwrap().sum(2).unwrap() * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .affine(1.0 / (total * O as f64), 0.0)
                    .unwrap(),
                Target::Classes(l) => {
                    let logp = candle_nn::ops::log_softmax(&ys, 2).unwrap();
                    let nll = logp
                        .gather(&l.unsqueeze(2).unwrap().contiguous().unwrap(), 2)
                        .unwrap()
                        .squeeze(2)
                        .unwrap();
                    (nll * &w)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .affine(-1.0 / total, 0.0)
                        .unwrap()
                }
            };
            let store = loss.backward().unwrap();
            for (k, (v, g)) in vars.iter().zip(grad_list(&grads)).enumerate() {
                let auto = store.get(v.as_tensor()).expect("autograd grad");
                let d = common::max_abs_diff(auto, &g);
                assert!(
                    d < 1e-12,
                    "{mode:?} {kind:?} param {k}: autograd differs by {d:e}"
                );
            }
            let auto_h0 = store.get(h0v.as_tensor()).unwrap();
            assert!(common::max_abs_diff(auto_h0, &grads.h0) < 1e-12);
        }
    }
}

/// No recursion that grows with T: 5000 steps of full BPTT on a default
/// 2 MiB thread (candle's own autograd overflows at ~200 steps in debug builds).
#[test]
fn long_sequence_backward_does_not_overflow_the_stack() {
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let cfg = ModelConfig::new(2, 8, 1).with_head(1);
            let m = GruModel::init(cfg, 1, &Device::Cpu).unwrap();
            let t = 5000;
            let xs = common::rand_tensor(&[1, t, 2], 5, 1.0);
            let batch = Batch {
                xs,
                lengths: vec![t],
                target: Target::Regression(
                    Tensor::zeros((1, t, 1), DType::F32, &Device::Cpu).unwrap(),
                ),
                weights: Tensor::ones((1, t), DType::F32, &Device::Cpu).unwrap(),
            };
            let (loss, g) = m.loss_and_gradients(&batch, None, None).unwrap();
            assert!(loss.is_finite());
            assert!(g.global_norm().unwrap().is_finite());
        })
        .unwrap();
    handle.join().expect("backward over 5000 steps panicked");
}

#[test]
fn clipping_follows_pytorch_semantics() {
    let m = model(ResetMode::AfterMatmul);
    let (batch, h0) = batch(Kind::Mse);
    let (_, mut g) = m.loss_and_gradients(&batch, Some(&h0), None).unwrap();
    let before = g.global_norm().unwrap();
    let reported = g.clip_global_norm(before / 4.0).unwrap();
    assert_eq!(reported, before);
    let after = g.global_norm().unwrap();
    // clip_grad_norm_: scale = max_norm / (norm + 1e-6).
    let want = before * (before / 4.0) / (before + 1e-6);
    assert!((after - want).abs() < 1e-9 * want, "{after} vs {want}");
    // Below the threshold nothing changes.
    let norm = g.clip_global_norm(1e9).unwrap();
    assert!((norm - after).abs() < 1e-12);
}

/// Batches above 4 rows take the gemm path (transposed weights laid out once);
/// it must agree with the candle-op backward too, both modes, with a window.
#[test]
fn fused_backward_matches_reference_on_larger_batches() {
    for mode in [ResetMode::AfterMatmul, ResetMode::BeforeMatmul] {
        let cfg = ModelConfig::new(5, 9, 2)
            .with_head(2)
            .with_reset_mode(mode)
            .with_dtype(Precision::F64);
        let m = GruModel::init(cfg, 8, &Device::Cpu).unwrap();
        let (b, t) = (7, 9);
        let lengths = vec![9, 2, 9, 5, 1, 7, 3];
        let batch = Batch {
            xs: common::rand_tensor(&[b, t, 5], 31, 1.0)
                .to_dtype(DType::F64)
                .unwrap(),
            lengths,
            target: Target::Regression(
                common::rand_tensor(&[b, t, 2], 32, 1.0)
                    .to_dtype(DType::F64)
                    .unwrap(),
            ),
            weights: Tensor::ones((b, t), DType::F64, &Device::Cpu).unwrap(),
        };
        for window in [None, Some(3)] {
            let (_, fused) = m.loss_and_gradients(&batch, None, window).unwrap();
            let reference = m.clone().with_backend(Backend::Reference);
            let (_, refg) = reference.loss_and_gradients(&batch, None, window).unwrap();
            for (k, (a, r)) in grad_list(&fused).iter().zip(grad_list(&refg)).enumerate() {
                let d = common::max_abs_diff(a, &r);
                assert!(d < 1e-12, "{mode:?} {window:?} param {k}: {d:e}");
            }
        }
    }
}
