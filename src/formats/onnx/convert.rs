//! From a parsed ONNX GRU graph to a [`GruModel`]: the bridge between the
//! protobuf reader and the model core (which knows nothing of ONNX files).

use std::path::Path;

use candle_core::{Device, Tensor};

use super::{load_gru_model, Array, GruGraph};
use crate::model::weights::{model_from_onnx_layers, OnnxLayerArrays};
use crate::model::{GruModel, ModelError, Task};

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
                None => Tensor::zeros(h.weight.shape[0], candle_core::DType::F32, device)?,
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
