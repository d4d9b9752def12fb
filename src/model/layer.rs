//! One GRU layer: its parameters, their one internal layout, exact
//! conversions from/to the layouts other tools use, and what its forward
//! produces.
//!
//! # Internal layout and convention
//!
//! Row-vector batches: x is [B, I], h is [B, H]. Per layer:
//!
//! | tensor | shape   | meaning |
//! |--------|---------|---------|
//! | `w_ih` | [I, 3H] | input weights, column blocks r, z, c (so `x @ w_ih`) |
//! | `w_hh` | [H, 3H] | recurrent weights, column blocks r, z, c |
//! | `b_ih` | [3H]    | input-side biases |
//! | `b_hh` | [3H]    | recurrent-side biases (b_hc sits inside r ⊙ (·) for `after_matmul`) |
//!
//! z follows the seed (Chung et al. 2014): h' = (1 − z) ⊙ h + z ⊙ c, so z weights
//! the candidate c. PyTorch, ONNX, cuDNN and Keras let z keep the old state
//! instead; since 1 − σ(a) = σ(−a) their z is ours with the z pre-activation
//! negated, so conversion negates the z blocks of all four tensors (exact in
//! floating point). Gate order r, z, c equals PyTorch's r, z, n; ONNX's z, r, h
//! is permuted on the way in and out.

use candle_core::{DType, Device, Tensor, D};

use super::config::ResetMode;
use super::cpu::packed::LayerPacks;
use super::error::ModelError;

/// Parameters of one layer in the internal layout, plus derived compute tensors.
#[derive(Debug, Clone)]
pub struct GruLayer {
    pub(crate) mode: ResetMode,
    pub(crate) input_size: usize,
    pub(crate) hidden_size: usize,
    pub(crate) w_ih: Tensor,
    pub(crate) w_hh: Tensor,
    pub(crate) b_ih: Tensor,
    pub(crate) b_hh: Tensor,
    /// Bias folded into the input projection: b_ih + [b_hr, b_hz, b_hc or 0].
    /// b_hc is folded only for `before_matmul`, where it sits outside r.
    pub(crate) gi_bias: Tensor,
    /// Bias added to the recurrent projection: [0, 0, b_hc] for `after_matmul`, else zeros.
    pub(crate) gh_bias: Tensor,
    /// `before_matmul` only: contiguous copies of w_hh's [r | z] and c column
    /// blocks, for devices whose matmul wants contiguous operands.
    pub(crate) w_hh_rz: Option<Tensor>,
    pub(crate) w_hh_c: Option<Tensor>,
    /// The weights packed for the fused CPU forward (f32, AVX-512), made on
    /// first use. The tensors above are never changed in place, so it never
    /// goes stale (training builds new layers after each optimizer step).
    pub(crate) packs: std::sync::OnceLock<Option<std::sync::Arc<LayerPacks>>>,
}

/// The four parameter tensors of a layer, in the internal layout (see module docs).
#[derive(Debug, Clone)]
pub struct LayerParams {
    pub w_ih: Tensor,
    pub w_hh: Tensor,
    pub b_ih: Tensor,
    pub b_hh: Tensor,
}

/// What a layer's forward produces.
pub(crate) struct LayerRun {
    /// [T, B, H] or, when asked for `YsLayout::BatchMajor`, [B, T, H]; zero at
    /// padded positions.
    pub ys: Tensor,
    /// [B, H]: each row's state at its own last step.
    pub h_last: Tensor,
    /// [T, B, 4H] = r | z | c | g per step (g = W_hc h + b_hc, `after_matmul`
    /// only; zero otherwise). Zero at padded positions. Only when asked.
    pub cache: Option<Tensor>,
}

/// Where the fused forward writes the layer outputs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum YsLayout {
    /// [T, B, H]: the next layer's input and what BPTT reads.
    TimeMajor,
    /// [B, T, H]: what `GruModel::forward` returns; written directly so the
    /// top layer's outputs need no transpose afterwards.
    BatchMajor,
}

impl GruLayer {
    /// Builds a layer from internal-layout parameters, checking every shape.
    pub fn new(mode: ResetMode, p: LayerParams) -> Result<Self, ModelError> {
        let (i, h3) = p.w_ih.dims2().map_err(|_| bad_rank("w_ih", &p.w_ih, 2))?;
        if h3 % 3 != 0 || h3 == 0 {
            return Err(ModelError::Shape(format!(
                "w_ih has {h3} columns, not a positive multiple of 3 (r, z, c blocks)"
            )));
        }
        let h = h3 / 3;
        expect_shape("w_hh", &p.w_hh, &[h, 3 * h])?;
        expect_shape("b_ih", &p.b_ih, &[3 * h])?;
        expect_shape("b_hh", &p.b_hh, &[3 * h])?;
        let dtype = p.w_ih.dtype();
        for (name, t) in [("w_hh", &p.w_hh), ("b_ih", &p.b_ih), ("b_hh", &p.b_hh)] {
            if t.dtype() != dtype {
                return Err(ModelError::Shape(format!(
                    "{name} is {:?} but w_ih is {dtype:?}",
                    t.dtype()
                )));
            }
        }
        let zeros = Tensor::zeros(h, dtype, p.b_hh.device())?;
        let bhr_bhz = p.b_hh.narrow(0, 0, 2 * h)?;
        let bhc = p.b_hh.narrow(0, 2 * h, h)?;
        let (folded_c, kept_c) = match mode {
            ResetMode::BeforeMatmul => (bhc.clone(), zeros.clone()),
            ResetMode::AfterMatmul => (zeros.clone(), bhc.clone()),
        };
        let gi_bias = (&p.b_ih + Tensor::cat(&[&bhr_bhz, &folded_c], 0)?)?;
        let gh_bias = Tensor::cat(&[&zeros, &zeros, &kept_c], 0)?;
        let (w_hh_rz, w_hh_c) = match mode {
            ResetMode::BeforeMatmul => (
                Some(p.w_hh.narrow(1, 0, 2 * h)?.contiguous()?),
                Some(p.w_hh.narrow(1, 2 * h, h)?.contiguous()?),
            ),
            ResetMode::AfterMatmul => (None, None),
        };
        Ok(GruLayer {
            w_hh_rz,
            w_hh_c,
            mode,
            input_size: i,
            hidden_size: h,
            w_ih: p.w_ih.contiguous()?,
            w_hh: p.w_hh.contiguous()?,
            b_ih: p.b_ih.contiguous()?,
            b_hh: p.b_hh.contiguous()?,
            gi_bias: gi_bias.contiguous()?,
            gh_bias: gh_bias.contiguous()?,
            packs: std::sync::OnceLock::new(),
        })
    }

    /// The packed weights of the fused CPU forward, packed on first use.
    pub(crate) fn packs(&self) -> Option<&LayerPacks> {
        self.packs
            .get_or_init(|| {
                LayerPacks::build(
                    self.mode,
                    self.input_size,
                    self.hidden_size,
                    &self.w_ih,
                    &self.w_hh,
                )
                .map(std::sync::Arc::new)
            })
            .as_deref()
    }

    pub fn mode(&self) -> ResetMode {
        self.mode
    }
    pub fn input_size(&self) -> usize {
        self.input_size
    }
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The parameters in the internal layout.
    pub fn params(&self) -> LayerParams {
        LayerParams {
            w_ih: self.w_ih.clone(),
            w_hh: self.w_hh.clone(),
            b_ih: self.b_ih.clone(),
            b_hh: self.b_hh.clone(),
        }
    }

    /// From PyTorch `nn.GRU` tensors of one layer: `weight_ih_l{k}` [3H, I],
    /// `weight_hh_l{k}` [3H, H], `bias_ih_l{k}` and `bias_hh_l{k}` [3H] (rows r, z, n;
    /// z keeps the old state). PyTorch only has `after_matmul`.
    pub fn from_pytorch(
        weight_ih: &Tensor,
        weight_hh: &Tensor,
        bias_ih: &Tensor,
        bias_hh: &Tensor,
    ) -> Result<Self, ModelError> {
        let (h3, _) = weight_ih
            .dims2()
            .map_err(|_| bad_rank("weight_ih", weight_ih, 2))?;
        if h3 % 3 != 0 {
            return Err(ModelError::Shape(format!(
                "weight_ih has {h3} rows, not a multiple of 3 (r, z, n blocks)"
            )));
        }
        let h = h3 / 3;
        let p = LayerParams {
            w_ih: negate_z(weight_ih, 0, h)?.t()?,
            w_hh: negate_z(weight_hh, 0, h)?.t()?,
            b_ih: negate_z(bias_ih, 0, h)?,
            b_hh: negate_z(bias_hh, 0, h)?,
        };
        Self::new(ResetMode::AfterMatmul, p)
    }

    /// The inverse of [`GruLayer::from_pytorch`] (bit-exact). Refused for
    /// `before_matmul`, which PyTorch's `nn.GRU` cannot express.
    pub fn to_pytorch(&self) -> Result<[Tensor; 4], ModelError> {
        if self.mode != ResetMode::AfterMatmul {
            return Err(ModelError::Unsupported(
                "PyTorch nn.GRU applies the reset gate after the matmul; a before_matmul model has no exact nn.GRU equivalent (export it to ONNX with linear_before_reset = 0, or retrain)".into(),
            ));
        }
        let h = self.hidden_size;
        Ok([
            negate_z(&self.w_ih.t()?, 0, h)?.contiguous()?,
            negate_z(&self.w_hh.t()?, 0, h)?.contiguous()?,
            negate_z(&self.b_ih, 0, h)?,
            negate_z(&self.b_hh, 0, h)?,
        ])
    }

    /// From one ONNX GRU node's W [3H, I], R [3H, H] (row blocks z, r, h) and
    /// B [6H] = [Wb_z, Wb_r, Wb_h, Rb_z, Rb_r, Rb_h] (zeros when absent).
    /// `linear_before_reset` = 1 is `after_matmul`, 0 is `before_matmul`.
    pub fn from_onnx(
        w: &Tensor,
        r: &Tensor,
        b: Option<&Tensor>,
        linear_before_reset: bool,
    ) -> Result<Self, ModelError> {
        let (h3, _) = w.dims2().map_err(|_| bad_rank("W", w, 2))?;
        if h3 % 3 != 0 {
            return Err(ModelError::Shape(format!(
                "ONNX W has {h3} rows, not a multiple of 3 (z, r, h blocks)"
            )));
        }
        let h = h3 / 3;
        let b = match b {
            Some(b) => {
                expect_shape("B", b, &[6 * h])?;
                b.clone()
            }
            None => Tensor::zeros(6 * h, w.dtype(), w.device())?,
        };
        // ONNX z, r, h → r, z, h, then z negated (ONNX's z keeps the old state).
        let from = |t: &Tensor| -> Result<Tensor, ModelError> {
            negate_z(&swap_first_blocks(t, h)?, 0, h)
        };
        let p = LayerParams {
            w_ih: from(w)?.t()?,
            w_hh: from(r)?.t()?,
            b_ih: from(&b.narrow(0, 0, 3 * h)?)?,
            b_hh: from(&b.narrow(0, 3 * h, 3 * h)?)?,
        };
        let mode = if linear_before_reset {
            ResetMode::AfterMatmul
        } else {
            ResetMode::BeforeMatmul
        };
        Self::new(mode, p)
    }

    /// Copies the layer to `device` (and/or converts its dtype).
    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let mv = |t: &Tensor| t.to_device(device).and_then(|t| t.to_dtype(dtype));
        Self::new(
            self.mode,
            LayerParams {
                w_ih: mv(&self.w_ih)?,
                w_hh: mv(&self.w_hh)?,
                b_ih: mv(&self.b_ih)?,
                b_hh: mv(&self.b_hh)?,
            },
        )
    }
}

/// Negates the z block (the second of three blocks of `h`) along `dim`.
fn negate_z(t: &Tensor, dim: usize, h: usize) -> Result<Tensor, ModelError> {
    let r = t.narrow(dim, 0, h)?;
    let z = t.narrow(dim, h, h)?.neg()?;
    let c = t.narrow(dim, 2 * h, h)?;
    Ok(Tensor::cat(&[&r, &z, &c], dim)?)
}

/// Swaps the first two blocks of `h` rows: (z, r, h) ↔ (r, z, h). Its own inverse.
fn swap_first_blocks(t: &Tensor, h: usize) -> Result<Tensor, ModelError> {
    let a = t.narrow(0, 0, h)?;
    let b = t.narrow(0, h, h)?;
    let c = t.narrow(0, 2 * h, h)?;
    Ok(Tensor::cat(&[&b, &a, &c], 0)?)
}

/// The ONNX arrays (W, R, B) of a layer: the inverse of [`GruLayer::from_onnx`].
pub fn to_onnx(layer: &GruLayer) -> Result<[Tensor; 3], ModelError> {
    let h = layer.hidden_size;
    let to =
        |t: &Tensor| -> Result<Tensor, ModelError> { swap_first_blocks(&negate_z(t, 0, h)?, h) };
    let w = to(&layer.w_ih.t()?)?.contiguous()?;
    let r = to(&layer.w_hh.t()?)?.contiguous()?;
    let b = Tensor::cat(&[to(&layer.b_ih)?, to(&layer.b_hh)?], 0)?;
    Ok([w, r, b])
}

pub(crate) fn expect_shape(name: &str, t: &Tensor, want: &[usize]) -> Result<(), ModelError> {
    if t.dims() != want {
        return Err(ModelError::Shape(format!(
            "{name}: expected shape {want:?}, found {:?}",
            t.dims()
        )));
    }
    Ok(())
}

fn bad_rank(name: &str, t: &Tensor, rank: usize) -> ModelError {
    ModelError::Shape(format!(
        "{name}: expected a rank-{rank} tensor, found shape {:?}",
        t.dims()
    ))
}

/// Column block `k` (0 = r, 1 = z, 2 = c) of a [.., 3H] tensor.
pub(crate) fn gate_block(t: &Tensor, k: usize, h: usize) -> candle_core::Result<Tensor> {
    t.narrow(D::Minus1, k * h, h)
}
