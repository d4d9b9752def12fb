//! From a parsed ONNX GRU graph to a [`GruModel`], and the exact conversions
//! between ONNX's GRU arrays and the internal layout.
//!
//! ONNX stores each layer as row blocks z, r, h with z keeping the old state;
//! the internal layout is column blocks r, z, c with z weighting the
//! candidate. So a conversion swaps the first two blocks, negates z
//! ([`super::super::negate_z`]) and transposes: bit-exact both ways.
//! `linear_before_reset` = 1 is `after_matmul`, 0 is `before_matmul`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{load_gru_model, Array, GruGraph};
use crate::formats::negate_z;
use crate::formats::pytorch::head_from_pytorch;
use crate::formats::tensor_file::check_finite;
use crate::model::layer::{bad_rank, expect_shape};
use crate::model::{GruLayer, GruModel, LayerParams, ModelConfig, ModelError};
use crate::model::{Precision, ResetMode, Task};

/// One ONNX GRU node's arrays: W [3H, I], R [3H, H], B [6H] (gate blocks z, r, h).
pub struct OnnxLayerArrays {
    pub w: Tensor,
    pub r: Tensor,
    pub b: Option<Tensor>,
    pub linear_before_reset: bool,
}

/// From one ONNX GRU node's W [3H, I], R [3H, H] (row blocks z, r, h) and
/// B [6H] = [Wb_z, Wb_r, Wb_h, Rb_z, Rb_r, Rb_h] (zeros when absent).
pub fn layer_from_onnx(
    w: &Tensor,
    r: &Tensor,
    b: Option<&Tensor>,
    linear_before_reset: bool,
) -> Result<GruLayer, ModelError> {
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
    let from =
        |t: &Tensor| -> Result<Tensor, ModelError> { negate_z(&swap_first_blocks(t, h)?, 0, h) };
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
    GruLayer::new(mode, p)
}

/// The ONNX arrays (W, R, B) of a layer: the inverse of [`layer_from_onnx`].
pub fn layer_to_onnx(layer: &GruLayer) -> Result<[Tensor; 3], ModelError> {
    let h = layer.hidden_size();
    let p = layer.params();
    let to =
        |t: &Tensor| -> Result<Tensor, ModelError> { swap_first_blocks(&negate_z(t, 0, h)?, h) };
    let w = to(&p.w_ih.t()?)?.contiguous()?;
    let r = to(&p.w_hh.t()?)?.contiguous()?;
    let b = Tensor::cat(&[to(&p.b_ih)?, to(&p.b_hh)?], 0)?;
    Ok([w, r, b])
}

/// Swaps the first two blocks of `h` rows: (z, r, h) ↔ (r, z, h). Its own inverse.
fn swap_first_blocks(t: &Tensor, h: usize) -> Result<Tensor, ModelError> {
    let a = t.narrow(0, 0, h)?;
    let b = t.narrow(0, h, h)?;
    let c = t.narrow(0, 2 * h, h)?;
    Ok(Tensor::cat(&[&b, &a, &c], 0)?)
}

/// The ONNX arrays (W, R, B) of every layer, bottom first.
pub fn onnx_layer_arrays(model: &GruModel) -> Result<Vec<[Tensor; 3]>, ModelError> {
    model.layers().iter().map(layer_to_onnx).collect()
}

/// Builds a model from ONNX GRU nodes (bottom layer first) and an optional
/// head given as PyTorch-oriented weight [O, H] and bias [O].
pub fn model_from_onnx_layers(
    nodes: &[OnnxLayerArrays],
    head: Option<(Tensor, Tensor)>,
    task: Task,
) -> Result<GruModel, ModelError> {
    let first = nodes
        .first()
        .ok_or_else(|| ModelError::Weights("the ONNX graph has no GRU node".into()))?;
    let lbr = first.linear_before_reset;
    if let Some(k) = nodes.iter().position(|n| n.linear_before_reset != lbr) {
        return Err(ModelError::Unsupported(format!(
            "GRU node {k} has linear_before_reset = {}, node 0 has {}: one model has one reset mode",
            nodes[k].linear_before_reset as u8, lbr as u8
        )));
    }
    let layers = nodes
        .iter()
        .enumerate()
        .map(|(k, n)| {
            for (name, t) in [("W", Some(&n.w)), ("R", Some(&n.r)), ("B", n.b.as_ref())] {
                if let Some(t) = t {
                    check_finite(&format!("GRU node {k} {name}"), t)?;
                }
            }
            layer_from_onnx(&n.w, &n.r, n.b.as_ref(), n.linear_before_reset)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (i, h) = (layers[0].input_size(), layers[0].hidden_size());
    let head = match head {
        Some((w, b)) => {
            check_finite("head weight", &w)?;
            check_finite("head bias", &b)?;
            Some(head_from_pytorch(&w, &b)?)
        }
        None => None,
    };
    let mut cfg = ModelConfig::new(i, h, layers.len())
        .with_reset_mode(layers[0].mode())
        .with_task(task)
        .with_dtype(Precision::from_dtype(layers[0].params().w_ih.dtype())?);
    cfg.output_size = head.as_ref().map(|hd| hd.b.dims()[0]);
    GruModel::new(cfg, layers, head)
}

fn tensor(a: &Array, device: &Device) -> Result<Tensor, ModelError> {
    Ok(Tensor::from_vec(
        a.data.clone(),
        a.shape.as_slice(),
        device,
    )?)
}

/// Builds the model a parsed graph describes (f32, as ONNX stored it).
pub fn model_from_graph(
    graph: &GruGraph,
    task: Task,
    device: &Device,
) -> Result<GruModel, ModelError> {
    let nodes = graph
        .layers
        .iter()
        .map(|n| {
            Ok(OnnxLayerArrays {
                w: tensor(&n.w, device)?,
                r: tensor(&n.r, device)?,
                b: n.b.as_ref().map(|b| tensor(b, device)).transpose()?,
                linear_before_reset: n.linear_before_reset,
            })
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    let head = match &graph.head {
        Some(h) => {
            let w = tensor(&h.weight, device)?;
            let b = match &h.bias {
                Some(b) => tensor(b, device)?,
                None => Tensor::zeros(h.weight.shape[0], DType::F32, device)?,
            };
            Some((w, b))
        }
        None => None,
    };
    model_from_onnx_layers(&nodes, head, task)
}

/// Reads an ONNX file holding GRU node(s) (+ optional linear head) as a model.
pub fn import_onnx(path: &Path, task: Task, device: &Device) -> Result<GruModel, ModelError> {
    let graph = load_gru_model(path)
        .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
    model_from_graph(&graph, task, device)
}
