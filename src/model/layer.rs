//! One GRU layer: its parameters, their one internal layout, and what its
//! forward produces. Conversions from/to the layouts other tools use live in
//! `crate::formats`.
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
//! negated, so a conversion negates the z blocks of all four tensors (exact in
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

pub(crate) fn expect_shape(name: &str, t: &Tensor, want: &[usize]) -> Result<(), ModelError> {
    if t.dims() != want {
        return Err(ModelError::Shape(format!(
            "{name}: expected shape {want:?}, found {:?}",
            t.dims()
        )));
    }
    Ok(())
}

pub(crate) fn bad_rank(name: &str, t: &Tensor, rank: usize) -> ModelError {
    ModelError::Shape(format!(
        "{name}: expected a rank-{rank} tensor, found shape {:?}",
        t.dims()
    ))
}

/// Column block `k` (0 = r, 1 = z, 2 = c) of a [.., 3H] tensor.
pub(crate) fn gate_block(t: &Tensor, k: usize, h: usize) -> candle_core::Result<Tensor> {
    t.narrow(D::Minus1, k * h, h)
}
