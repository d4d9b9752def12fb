//! PyTorch: an `nn.GRU` state dict (`weight_ih_l{k}`, `weight_hh_l{k}`,
//! `bias_ih_l{k}`, `bias_hh_l{k}` under any prefix) with an optional
//! `nn.Linear` head (`weight`, `bias`), as safetensors; and the exact
//! conversions between PyTorch's layout and the internal one.
//!
//! PyTorch stores each layer as rows r, z, n with z keeping the old state;
//! the internal layout is column blocks r, z, c with z weighting the
//! candidate. So a conversion transposes and negates the z blocks of all four
//! tensors ([`super::negate_z`]): bit-exact both ways. PyTorch only has
//! `after_matmul`.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use super::files::{write_atomic, FileError};
use super::negate_z;
use super::tensor_file::{self, in_file, st_dtype, take, TensorFileError};
use crate::model::layer::{bad_rank, expect_shape};
use crate::model::{GruLayer, GruModel, Head, LayerParams, ModelConfig, ModelError};
use crate::model::{Precision, ResetMode, Task};

/// Why a PyTorch state dict could not be imported or exported.
#[derive(Debug, thiserror::Error)]
pub enum PytorchError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Tensors(#[from] TensorFileError),
    #[error("no 'weight_ih_l0' tensor: not an nn.GRU state dict")]
    NoGru,
    #[error("several GRUs in the state dict (prefixes {0:?}); name the one to import")]
    SeveralGrus(BTreeSet<String>),
    #[error("'{0}': bidirectional GRUs are not served (a session steps forward in time)")]
    Bidirectional(String),
    #[error("'{name}' is {found:?}; import f32 or f64 weights")]
    Dtype {
        name: String,
        found: safetensors::Dtype,
    },
    #[error("'{name}' has shape {found:?}, expected [3H, I]")]
    FirstShape { name: String, found: Vec<usize> },
    #[error("'{name}' has {rows} rows, not a positive multiple of 3")]
    Rows { name: String, rows: usize },
    #[error("tensor '{name}' under the GRU prefix '{prefix}' is not part of an nn.GRU with {layers} layers")]
    Stray {
        name: String,
        prefix: String,
        layers: usize,
    },
    #[error("several candidate heads ({0:?}weight); name the head prefix")]
    SeveralHeads(Vec<String>),
    #[error("head '{name}' has shape {found:?}, expected [O, {hidden}]")]
    HeadShape {
        name: String,
        found: Vec<usize>,
        hidden: usize,
    },
    #[error("PyTorch nn.GRU applies the reset gate after the matmul; a before_matmul model has no exact nn.GRU equivalent (export it to ONNX with linear_before_reset = 0, or retrain)")]
    BeforeMatmul,
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl From<PytorchError> for ModelError {
    fn from(e: PytorchError) -> Self {
        match e {
            PytorchError::File(e) => e.into(),
            PytorchError::Tensors(e) => e.into(),
            PytorchError::Model(e) => e,
            PytorchError::Tensor(e) => ModelError::Candle(e),
            e @ (PytorchError::Bidirectional(_) | PytorchError::BeforeMatmul) => {
                ModelError::Unsupported(e.to_string())
            }
            e => ModelError::Weights(e.to_string()),
        }
    }
}

/// Where the GRU and the head sit in a PyTorch state dict.
#[derive(Debug, Clone, Default)]
pub struct PytorchNames {
    /// Prefix of the `nn.GRU` keys, e.g. `"gru."`; `None` finds it.
    pub gru_prefix: Option<String>,
    /// Prefix of the `nn.Linear` head keys, e.g. `"head."`; `None` finds it
    /// (the one `weight`/`bias` pair outside the GRU, if there is one).
    pub head_prefix: Option<String>,
}

/// From PyTorch `nn.GRU` tensors of one layer: `weight_ih_l{k}` [3H, I],
/// `weight_hh_l{k}` [3H, H], `bias_ih_l{k}` and `bias_hh_l{k}` [3H] (rows r, z, n;
/// z keeps the old state).
pub fn layer_from_pytorch(
    weight_ih: &Tensor,
    weight_hh: &Tensor,
    bias_ih: &Tensor,
    bias_hh: &Tensor,
) -> Result<GruLayer, ModelError> {
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
    GruLayer::new(ResetMode::AfterMatmul, p)
}

/// The inverse of [`layer_from_pytorch`] (bit-exact). Refused for
/// `before_matmul`, which PyTorch's `nn.GRU` cannot express.
pub fn layer_to_pytorch(layer: &GruLayer) -> Result<[Tensor; 4], PytorchError> {
    if layer.mode() != ResetMode::AfterMatmul {
        return Err(PytorchError::BeforeMatmul);
    }
    let h = layer.hidden_size();
    let p = layer.params();
    Ok([
        negate_z(&p.w_ih.t()?, 0, h)?.contiguous()?,
        negate_z(&p.w_hh.t()?, 0, h)?.contiguous()?,
        negate_z(&p.b_ih, 0, h)?,
        negate_z(&p.b_hh, 0, h)?,
    ])
}

/// From PyTorch `nn.Linear` tensors: weight [O, H], bias [O].
pub fn head_from_pytorch(weight: &Tensor, bias: &Tensor) -> Result<Head, ModelError> {
    let (o, _) = weight.dims2()?;
    expect_shape("head bias", bias, &[o])?;
    Ok(Head {
        w: weight.t()?.contiguous()?,
        b: bias.contiguous()?,
    })
}

/// PyTorch `nn.Linear` tensors (weight [O, H], bias [O]) of a head.
pub fn head_to_pytorch(head: &Head) -> Result<[Tensor; 2], ModelError> {
    Ok([head.w.t()?.contiguous()?, head.b.clone()])
}

/// Imports a PyTorch `nn.GRU` (+ optional `nn.Linear`) state dict saved as safetensors.
pub fn import_pytorch(
    path: &Path,
    names: &PytorchNames,
    task: Task,
    device: &Device,
) -> Result<GruModel, ModelError> {
    let bytes = tensor_file::read_limited(path)?;
    let st = tensor_file::parse(&bytes, path)?;
    import_pytorch_tensors(&st, names, task, device).map_err(|e| in_file(e.into(), path))
}

/// Exports an `after_matmul` model as a PyTorch state dict in safetensors:
/// `{gru_prefix}weight_ih_l{k}` … and, with a head, `{head_prefix}weight`/`bias`.
pub fn export_pytorch(
    model: &GruModel,
    path: &Path,
    gru_prefix: &str,
    head_prefix: &str,
) -> Result<(), ModelError> {
    Ok(write_pytorch(model, path, gru_prefix, head_prefix)?)
}

fn write_pytorch(
    model: &GruModel,
    path: &Path,
    gru_prefix: &str,
    head_prefix: &str,
) -> Result<(), PytorchError> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (k, l) in model.layers().iter().enumerate() {
        let [wi, wh, bi, bh] = layer_to_pytorch(l)?;
        tensors.push((format!("{gru_prefix}weight_ih_l{k}"), wi));
        tensors.push((format!("{gru_prefix}weight_hh_l{k}"), wh));
        tensors.push((format!("{gru_prefix}bias_ih_l{k}"), bi));
        tensors.push((format!("{gru_prefix}bias_hh_l{k}"), bh));
    }
    if let Some(h) = model.head() {
        let [w, b] = head_to_pytorch(h)?;
        tensors.push((format!("{head_prefix}weight"), w));
        tensors.push((format!("{head_prefix}bias"), b));
    }
    let bytes = tensor_file::serialize(tensors, None)?;
    Ok(write_atomic(path, &bytes)?)
}

fn import_pytorch_tensors(
    st: &SafeTensors<'_>,
    names: &PytorchNames,
    task: Task,
    device: &Device,
) -> Result<GruModel, PytorchError> {
    let all: Vec<&str> = st.names();
    let prefix = match &names.gru_prefix {
        Some(p) => p.clone(),
        None => find_gru_prefix(&all)?,
    };
    if let Some(rev) = all
        .iter()
        .find(|n| n.starts_with(&prefix) && n.ends_with("_reverse"))
    {
        return Err(PytorchError::Bidirectional(rev.to_string()));
    }
    let view = |n: &str| st.tensor(n).ok();
    let first_name = format!("{prefix}weight_ih_l0");
    let first = view(&first_name).ok_or_else(|| TensorFileError::Missing(first_name.clone()))?;
    let dtype = st_dtype(first.dtype())
        .filter(|d| matches!(d, DType::F32 | DType::F64))
        .ok_or_else(|| PytorchError::Dtype {
            name: first_name.clone(),
            found: first.dtype(),
        })?;
    let (h3, input_size) = match first.shape() {
        [a, b] => (*a, *b),
        s => {
            return Err(PytorchError::FirstShape {
                name: first_name,
                found: s.to_vec(),
            })
        }
    };
    if h3 % 3 != 0 || h3 == 0 {
        return Err(PytorchError::Rows {
            name: first_name,
            rows: h3,
        });
    }
    let h = h3 / 3;
    let num_layers = (0..)
        .take_while(|k| view(&format!("{prefix}weight_ih_l{k}")).is_some())
        .count();
    let mut used = BTreeSet::new();
    let mut layers = Vec::with_capacity(num_layers);
    for k in 0..num_layers {
        let i = if k == 0 { input_size } else { h };
        let mut get =
            |name: String, shape: &[usize], optional: bool| -> Result<Tensor, PytorchError> {
                if optional && view(&name).is_none() {
                    // nn.GRU(bias=False): the biases are zero.
                    return Ok(Tensor::zeros(shape, dtype, device)?);
                }
                let t = take(st, &name, shape, dtype, device)?;
                used.insert(name);
                Ok(t)
            };
        let w_ih = get(format!("{prefix}weight_ih_l{k}"), &[3 * h, i], false)?;
        let w_hh = get(format!("{prefix}weight_hh_l{k}"), &[3 * h, h], false)?;
        let b_ih = get(format!("{prefix}bias_ih_l{k}"), &[3 * h], true)?;
        let b_hh = get(format!("{prefix}bias_hh_l{k}"), &[3 * h], true)?;
        layers.push(layer_from_pytorch(&w_ih, &w_hh, &b_ih, &b_hh)?);
    }
    // Under an empty prefix, only keys shaped like nn.GRU's can be strays.
    let gru_key = |r: &str| {
        ["weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l"]
            .iter()
            .any(|p| r.starts_with(p))
    };
    if let Some(stray) = all.iter().find(|n| {
        !used.contains(**n)
            && n.strip_prefix(prefix.as_str())
                .is_some_and(|r| !prefix.is_empty() || gru_key(r))
    }) {
        return Err(PytorchError::Stray {
            name: stray.to_string(),
            prefix,
            layers: num_layers,
        });
    }
    let head_prefix = match &names.head_prefix {
        Some(p) => Some(p.clone()),
        None => find_head_prefix(&all, &used)?,
    };
    let head = match &head_prefix {
        None => None,
        Some(p) => Some(read_head(st, p, h, dtype, device)?),
    };
    let mut cfg = ModelConfig::new(input_size, h, num_layers)
        .with_reset_mode(ResetMode::AfterMatmul)
        .with_task(task)
        .with_dtype(Precision::from_dtype(dtype)?);
    cfg.output_size = head.as_ref().map(|hd| hd.b.dims()[0]);
    Ok(GruModel::new(cfg, layers, head)?)
}

/// The one prefix under which a `weight_ih_l0` key sits.
fn find_gru_prefix(all: &[&str]) -> Result<String, PytorchError> {
    let found: BTreeSet<&str> = all
        .iter()
        .filter_map(|n| n.strip_suffix("weight_ih_l0"))
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default().to_string()),
        0 => Err(PytorchError::NoGru),
        _ => Err(PytorchError::SeveralGrus(
            found.into_iter().map(String::from).collect(),
        )),
    }
}

/// The prefix of the one `weight` key the GRU did not use, if there is one.
fn find_head_prefix(all: &[&str], used: &BTreeSet<String>) -> Result<Option<String>, PytorchError> {
    let cands: Vec<&str> = all
        .iter()
        .filter(|n| !used.contains(**n))
        .filter_map(|n| n.strip_suffix("weight"))
        .collect();
    match cands.len() {
        0 => Ok(None),
        1 => Ok(Some(cands[0].to_string())),
        _ => Err(PytorchError::SeveralHeads(
            cands.into_iter().map(String::from).collect(),
        )),
    }
}

/// The `nn.Linear` head under `prefix` on a GRU of hidden size `h`; a
/// missing bias is zero.
fn read_head(
    st: &SafeTensors<'_>,
    prefix: &str,
    h: usize,
    dtype: DType,
    device: &Device,
) -> Result<Head, PytorchError> {
    let wname = format!("{prefix}weight");
    let w = st
        .tensor(&wname)
        .map_err(|_| TensorFileError::Missing(wname.clone()))?;
    let o = match w.shape() {
        [o, hh] if *hh == h => *o,
        s => {
            return Err(PytorchError::HeadShape {
                name: wname,
                found: s.to_vec(),
                hidden: h,
            })
        }
    };
    let weight = take(st, &wname, &[o, h], dtype, device)?;
    let bname = format!("{prefix}bias");
    let bias = if st.tensor(&bname).is_ok() {
        take(st, &bname, &[o], dtype, device)?
    } else {
        Tensor::zeros(o, dtype, device)?
    };
    Ok(head_from_pytorch(&weight, &bias)?)
}
