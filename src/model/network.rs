//! A GRU model: N stacked layers and an optional linear readout head applied
//! at every step.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use super::config::{ModelConfig, Precision};
use super::error::ModelError;
use super::forward::{layer_forward, Backend};
use super::layer::{expect_shape, GruLayer, LayerParams, LayerRun, YsLayout};

/// Linear readout: y = h · w + b, with w [H, O] (internal orientation) and b [O].
/// PyTorch's `nn.Linear` stores w transposed (`crate::formats::pytorch`).
#[derive(Debug, Clone)]
pub struct Head {
    pub w: Tensor,
    pub b: Tensor,
}

impl Head {
    pub(crate) fn apply(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        h.matmul(&self.w)?.broadcast_add(&self.b)
    }
}

/// A stacked GRU with an optional head. Weights are plain tensors (never
/// `Var`s), so inference records no autograd graph.
#[derive(Debug, Clone)]
pub struct GruModel {
    config: ModelConfig,
    layers: Vec<GruLayer>,
    head: Option<Head>,
    device: Device,
    backend: Backend,
}

/// Everything the training backward needs from a forward pass.
pub struct ForwardCache {
    /// Per layer: input [T, B, I_k] (time-major, sorted), h0 [B, H], cache [T, B, 4H], ys [T, B, H].
    pub(crate) layers: Vec<LayerCache>,
    /// Time-major batch sizes after sorting (non-increasing).
    pub(crate) batch_sizes: Vec<usize>,
    /// Original batch index of each sorted row.
    pub(crate) order: Vec<usize>,
}

pub(crate) struct LayerCache {
    pub input: Tensor,
    pub h0: Tensor,
    pub run: LayerRun,
}

impl GruModel {
    /// Assembles a model, checking every tensor against `config`.
    pub fn new(
        config: ModelConfig,
        layers: Vec<GruLayer>,
        head: Option<Head>,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        if layers.len() != config.num_layers {
            return Err(ModelError::Shape(format!(
                "config says num_layers = {}, got {} layers",
                config.num_layers,
                layers.len()
            )));
        }
        let dtype = config.dtype.dtype();
        let device = layers[0].w_ih.device().clone();
        for (k, l) in layers.iter().enumerate() {
            let (i, h) = (config.layer_input_size(k), config.hidden_size);
            if l.input_size != i || l.hidden_size != h {
                return Err(ModelError::Shape(format!(
                    "layer {k}: config expects input {i}, hidden {h}; weights have input {}, hidden {}",
                    l.input_size, l.hidden_size
                )));
            }
            if l.mode != config.reset_mode {
                return Err(ModelError::Config(format!(
                    "layer {k} is {} but config says {}",
                    l.mode.as_str(),
                    config.reset_mode.as_str()
                )));
            }
            if l.w_ih.dtype() != dtype {
                return Err(ModelError::Shape(format!(
                    "layer {k} weights are {:?}, config says {dtype:?}",
                    l.w_ih.dtype()
                )));
            }
        }
        match (&head, config.output_size) {
            (None, None) => {}
            (Some(hd), Some(o)) => {
                expect_shape("head.weight", &hd.w, &[config.hidden_size, o])?;
                expect_shape("head.bias", &hd.b, &[o])?;
                if hd.w.dtype() != dtype || hd.b.dtype() != dtype {
                    return Err(ModelError::Shape(format!("head weights are not {dtype:?}")));
                }
            }
            (None, Some(o)) => {
                return Err(ModelError::Shape(format!(
                    "config has output_size {o} but there is no head"
                )))
            }
            (Some(_), None) => {
                return Err(ModelError::Shape(
                    "a head is given but config has no output_size".into(),
                ))
            }
        }
        Ok(GruModel {
            config,
            layers,
            head,
            device,
            backend: Backend::default(),
        })
    }

    /// A freshly initialised model, deterministic in `seed`: every weight and
    /// bias ~ U(−1/√H, 1/√H) (PyTorch's `nn.GRU` / `nn.Linear` default).
    pub fn init(config: ModelConfig, seed: u64, device: &Device) -> Result<Self, ModelError> {
        config.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let h = config.hidden_size;
        let bound = 1.0 / (h as f64).sqrt();
        let dtype = config.dtype.dtype();
        let mut uniform = |shape: &[usize], bound: f64| -> Result<Tensor, ModelError> {
            let n: usize = shape.iter().product();
            let v: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
        };
        let mut layers = Vec::with_capacity(config.num_layers);
        for k in 0..config.num_layers {
            let i = config.layer_input_size(k);
            let p = LayerParams {
                w_ih: uniform(&[i, 3 * h], bound)?,
                w_hh: uniform(&[h, 3 * h], bound)?,
                b_ih: uniform(&[3 * h], bound)?,
                b_hh: uniform(&[3 * h], bound)?,
            };
            layers.push(GruLayer::new(config.reset_mode, p)?);
        }
        let head = match config.output_size {
            Some(o) => Some(Head {
                w: uniform(&[h, o], bound)?,
                b: uniform(&[o], bound)?,
            }),
            None => None,
        };
        Self::new(config, layers, head)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn layers(&self) -> &[GruLayer] {
        &self.layers
    }
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.config.dtype.dtype()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Chooses the implementation (fused CPU kernels or plain candle ops).
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Copies the model to another device and/or precision.
    pub fn to(&self, device: &Device, precision: Precision) -> Result<Self, ModelError> {
        let dtype = precision.dtype();
        let layers = self
            .layers
            .iter()
            .map(|l| l.to(device, dtype))
            .collect::<Result<Vec<_>, _>>()?;
        let mv = |t: &Tensor| t.to_device(device).and_then(|t| t.to_dtype(dtype));
        let head = match &self.head {
            Some(h) => Some(Head {
                w: mv(&h.w)?,
                b: mv(&h.b)?,
            }),
            None => None,
        };
        let config = self.config.clone().with_dtype(precision);
        Ok(Self::new(config, layers, head)?.with_backend(self.backend))
    }

    /// A zero initial state [L, B, H].
    pub fn zero_state(&self, batch: usize) -> Result<Tensor, ModelError> {
        Ok(Tensor::zeros(
            (self.config.num_layers, batch, self.config.hidden_size),
            self.dtype(),
            &self.device,
        )?)
    }

    /// One step of a batch: x [B, I], state [L, B, H] → (y [B, O], state' [L, B, H]).
    pub fn step(&self, x: &Tensor, state: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        let (b, i) = x
            .dims2()
            .map_err(|_| ModelError::Input(format!("x must be [B, I], got {:?}", x.dims())))?;
        if i != self.config.input_size {
            return Err(ModelError::Input(format!(
                "x has {i} features, model input_size is {}",
                self.config.input_size
            )));
        }
        self.check_batch(&x.reshape((b, 1, i))?, &vec![1; b], Some(state))?;
        // T = 1 and every row live: [B, 1, I] and [1, B, I] are the same
        // memory and the sort is the identity, so the layers run on views of
        // the inputs with none of `forward`'s sort/transpose/un-sort copies
        // (~5–7 µs per call at B = 1, BENCHMARKS.md).
        let mut input = x.reshape((1, b, i))?;
        let mut h_last = Vec::with_capacity(self.layers.len());
        for (k, layer) in self.layers.iter().enumerate() {
            let h0 = state.get(k)?;
            let run = layer_forward(
                layer,
                &input,
                &[b],
                &h0,
                false,
                self.backend,
                YsLayout::TimeMajor,
            )?;
            input = run.ys;
            h_last.push(run.h_last);
        }
        let h = input.reshape((b, self.config.hidden_size))?;
        let y = match &self.head {
            None => h,
            Some(head) => head.apply(&h)?,
        };
        Ok((y, stack_states(&h_last)?))
    }

    /// A padded batch of variable-length sequences: xs [B, T, I] with
    /// `lengths[b]` in 1..=T → (ys [B, T, O], final state [L, B, H]). Padded
    /// positions of `ys` are zero and change nothing; each sequence's final
    /// state is its state after its own last step. `state` defaults to zeros.
    pub fn forward(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        state: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let (cache, ys) = self.forward_impl(xs, lengths, state, false)?;
        let h_last: Vec<Tensor> = cache.layers.iter().map(|l| l.run.h_last.clone()).collect();
        let h_n = stack_states(&h_last)?;
        if is_identity(&cache.order) {
            // All lengths equal (the common case): nothing to un-sort.
            return Ok((ys, h_n));
        }
        let unsort = inverse_index(&cache.order, &self.device)?;
        Ok((ys.index_select(&unsort, 0)?, h_n.index_select(&unsort, 1)?))
    }

    /// Forward pass that keeps what BPTT needs. Returns the cache and the
    /// outputs [B, T, O] in **sorted** row order (see `ForwardCache::order`).
    pub(crate) fn forward_impl(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        state: Option<&Tensor>,
        want_cache: bool,
    ) -> Result<(ForwardCache, Tensor), ModelError> {
        let (b, t_len, i) = self.check_batch(xs, lengths, state)?;
        // Longest first, stable, so live rows at step t are a prefix.
        let mut order: Vec<usize> = (0..b).collect();
        order.sort_by_key(|&r| std::cmp::Reverse(lengths[r]));
        let batch_sizes: Vec<usize> = (0..t_len)
            .map(|t| lengths.iter().filter(|&&l| l > t).count())
            .collect();
        let identity = is_identity(&order);
        let idx = Tensor::from_vec(
            order.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            b,
            &self.device,
        )?;
        let sort = |t: &Tensor, dim: usize| -> candle_core::Result<Tensor> {
            if identity {
                Ok(t.clone())
            } else {
                // index_select wants contiguous input; callers may pass views.
                t.contiguous()?.index_select(&idx, dim)
            }
        };
        let mut input = sort(xs, 0)?.transpose(0, 1)?.contiguous()?; // [T, B, I]
        let h0_all = match state {
            Some(s) => sort(s, 1)?,
            None => self.zero_state(b)?,
        };
        // BPTT reads every layer's outputs time-major; otherwise the top layer
        // writes [B, T, H] directly, the layout returned.
        let n_layers = self.layers.len();
        let top_layout = if want_cache {
            YsLayout::TimeMajor
        } else {
            YsLayout::BatchMajor
        };
        let mut layers = Vec::with_capacity(n_layers);
        for (k, layer) in self.layers.iter().enumerate() {
            let h0 = h0_all.get(k)?.contiguous()?;
            let layout = if k + 1 == n_layers {
                top_layout
            } else {
                YsLayout::TimeMajor
            };
            let run = layer_forward(
                layer,
                &input,
                &batch_sizes,
                &h0,
                want_cache,
                self.backend,
                layout,
            )?;
            let next = run.ys.clone();
            layers.push(LayerCache { input, h0, run });
            input = next;
        }
        debug_assert_eq!(input.dims()[2], self.config.hidden_size);
        let _ = i;
        // `input` now holds the top layer's outputs, [T, B, H] or [B, T, H].
        let hsz = self.config.hidden_size;
        let ys = match (&self.head, top_layout) {
            (None, YsLayout::TimeMajor) => input.transpose(0, 1)?.contiguous()?,
            (None, YsLayout::BatchMajor) => input,
            (Some(head), layout) => {
                let o = head.b.dim(0)?;
                let y = head.apply(&input.reshape((t_len * b, hsz))?)?;
                let mask = step_mask(&batch_sizes, b, self.dtype(), &self.device)?;
                match layout {
                    YsLayout::TimeMajor => y
                        .reshape((t_len, b, o))?
                        .broadcast_mul(&mask)?
                        .transpose(0, 1)?
                        .contiguous()?,
                    YsLayout::BatchMajor => y
                        .reshape((b, t_len, o))?
                        .broadcast_mul(&mask.transpose(0, 1)?)?,
                }
            }
        }; // [B, T, O], sorted rows
        Ok((
            ForwardCache {
                layers,
                batch_sizes,
                order,
            },
            ys,
        ))
    }

    fn check_batch(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        state: Option<&Tensor>,
    ) -> Result<(usize, usize, usize), ModelError> {
        let (b, t_len, i) = xs
            .dims3()
            .map_err(|_| ModelError::Input(format!("xs must be [B, T, I], got {:?}", xs.dims())))?;
        let cfg = &self.config;
        if i != cfg.input_size {
            return Err(ModelError::Input(format!(
                "xs has {i} features per step, model input_size is {}",
                cfg.input_size
            )));
        }
        if b == 0 || t_len == 0 {
            return Err(ModelError::Input(format!(
                "empty batch: xs shape {:?}",
                xs.dims()
            )));
        }
        if lengths.len() != b {
            return Err(ModelError::Input(format!(
                "{} lengths for a batch of {b}",
                lengths.len()
            )));
        }
        if let Some((k, &l)) = lengths
            .iter()
            .enumerate()
            .find(|(_, &l)| l == 0 || l > t_len)
        {
            return Err(ModelError::Input(format!(
                "lengths[{k}] = {l}: must be in 1..={t_len}"
            )));
        }
        if xs.dtype() != self.dtype() {
            return Err(ModelError::Input(format!(
                "xs is {:?}, model computes in {:?}",
                xs.dtype(),
                self.dtype()
            )));
        }
        if let Some(s) = state {
            let want = [cfg.num_layers, b, cfg.hidden_size];
            if s.dims() != want {
                return Err(ModelError::Input(format!(
                    "state must be [layers, batch, hidden] = {want:?}, got {:?}",
                    s.dims()
                )));
            }
            if s.dtype() != self.dtype() {
                return Err(ModelError::Input(format!(
                    "state is {:?}, model computes in {:?}",
                    s.dtype(),
                    self.dtype()
                )));
            }
        }
        Ok((b, t_len, i))
    }
}

/// [T, B, 1] with 1 where step t of row b is live (rows sorted longest first).
pub(crate) fn step_mask(
    batch_sizes: &[usize],
    b: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; batch_sizes.len() * b];
    for (t, &n) in batch_sizes.iter().enumerate() {
        m[t * b..t * b + n].fill(1.0);
    }
    Tensor::from_vec(m, (batch_sizes.len(), b, 1), device)?.to_dtype(dtype)
}

fn is_identity(order: &[usize]) -> bool {
    order.iter().enumerate().all(|(k, &r)| k == r)
}

/// Per-layer [B, H] states → [L, B, H] (no copy for one layer).
fn stack_states(h: &[Tensor]) -> candle_core::Result<Tensor> {
    match h {
        [one] => one.unsqueeze(0),
        _ => Tensor::stack(h, 0),
    }
}

pub(crate) fn inverse_index(order: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    let mut inv = vec![0u32; order.len()];
    for (k, &r) in order.iter().enumerate() {
        inv[r] = k as u32;
    }
    Tensor::from_vec(inv, order.len(), device)
}
