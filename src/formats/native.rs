//! The native format: a folder with `config.json` ([`ModelConfig`]) and
//! `model.safetensors` holding the internal layout (see `model/layer.rs`):
//! `layers.{k}.w_ih` [I_k, 3H], `layers.{k}.w_hh` [H, 3H],
//! `layers.{k}.b_ih` [3H], `layers.{k}.b_hh` [3H], and with a head
//! `head.w` [H, O], `head.b` [O]. Loading checks every tensor's name, shape,
//! dtype and finiteness against the config.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::SafeTensors;

use super::files::{write_atomic, FileError};
use super::tensor_file::{self, in_file, take, TensorFileError};
use crate::model::FORMAT_VERSION;
use crate::model::{GruLayer, GruModel, Head, LayerParams, ModelConfig, ModelError};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Why a native model folder could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Tensors(#[from] TensorFileError),
    /// `config.json` is unreadable as a config of this build.
    #[error("invalid model config: {}: {reason}", .path.display())]
    Config { path: PathBuf, reason: String },
    #[error(
        "invalid weights: unexpected tensor '{name}' (config: {layers} layers, head {head:?})"
    )]
    UnexpectedTensor {
        name: String,
        layers: usize,
        head: Option<usize>,
    },
    #[error("internal error: serialize config: {0}")]
    SerializeConfig(serde_json::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl From<NativeError> for ModelError {
    fn from(e: NativeError) -> Self {
        match e {
            NativeError::File(e) => e.into(),
            NativeError::Tensors(e) => e.into(),
            NativeError::Config { path, reason } => {
                ModelError::Config(format!("{}: {reason}", path.display()))
            }
            NativeError::UnexpectedTensor { name, layers, head } => ModelError::Weights(format!(
                "unexpected tensor '{name}' (config: {layers} layers, head {head:?})"
            )),
            NativeError::SerializeConfig(e) => {
                ModelError::Internal(format!("serialize config: {e}"))
            }
            NativeError::Model(e) => e,
            NativeError::Tensor(e) => ModelError::Candle(e),
        }
    }
}

fn native_names(k: usize) -> [String; 4] {
    [
        format!("layers.{k}.w_ih"),
        format!("layers.{k}.w_hh"),
        format!("layers.{k}.b_ih"),
        format!("layers.{k}.b_hh"),
    ]
}

/// Writes the native folder (created if missing): `config.json` and `model.safetensors`.
pub fn save_native(model: &GruModel, dir: &Path) -> Result<(), ModelError> {
    Ok(write_native(model, dir)?)
}

fn write_native(model: &GruModel, dir: &Path) -> Result<(), NativeError> {
    std::fs::create_dir_all(dir).map_err(FileError::io(dir))?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (k, l) in model.layers().iter().enumerate() {
        let p = l.params();
        let [a, b, c, d] = native_names(k);
        tensors.extend([(a, p.w_ih), (b, p.w_hh), (c, p.b_ih), (d, p.b_hh)]);
    }
    if let Some(h) = model.head() {
        tensors.push(("head.w".into(), h.w.clone()));
        tensors.push(("head.b".into(), h.b.clone()));
    }
    let meta = BTreeMap::from([("format".to_string(), "gru-serve".to_string())]);
    let bytes = tensor_file::serialize(tensors, Some(meta.into_iter().collect()))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    let cfg = serde_json::to_vec_pretty(model.config()).map_err(NativeError::SerializeConfig)?;
    Ok(write_atomic(&dir.join(CONFIG_FILE), &cfg)?)
}

/// Reads `config.json` of a native model folder.
pub fn load_config(dir: &Path) -> Result<ModelConfig, ModelError> {
    Ok(read_config(dir)?)
}

fn read_config(dir: &Path) -> Result<ModelConfig, NativeError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&path).map_err(FileError::io(&path))?;
    let config_err = |reason: String| NativeError::Config {
        path: path.clone(),
        reason,
    };
    // Check the version before the rest, so a newer format says so plainly.
    let raw: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| config_err(e.to_string()))?;
    match raw.get("format_version") {
        Some(v) if v.as_u64() == Some(FORMAT_VERSION as u64) => {}
        Some(v) if v.is_u64() => {
            return Err(config_err(format!(
                "unknown format_version {v} (this build reads version {FORMAT_VERSION})"
            )))
        }
        Some(v) => {
            return Err(config_err(format!(
                "format_version is {v}, expected an unsigned integer"
            )))
        }
        None => return Err(config_err("missing format_version".to_string())),
    }
    let cfg: ModelConfig = serde_json::from_value(raw).map_err(|e| config_err(e.to_string()))?;
    cfg.validate().map_err(|e| match e {
        ModelError::Config(m) => config_err(m),
        other => NativeError::Model(other),
    })?;
    Ok(cfg)
}

/// Loads a native model folder onto `device`.
pub fn load_native(dir: &Path, device: &Device) -> Result<GruModel, ModelError> {
    let cfg = load_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = tensor_file::read_limited(&path)?;
    let st = tensor_file::parse(&bytes, &path)?;
    native_from_safetensors(cfg, &st, device).map_err(|e| in_file(e.into(), &path))
}

fn native_from_safetensors(
    cfg: ModelConfig,
    st: &SafeTensors<'_>,
    device: &Device,
) -> Result<GruModel, NativeError> {
    let dtype = cfg.dtype.dtype();
    let h = cfg.hidden_size;
    let mut expected = BTreeSet::new();
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for k in 0..cfg.num_layers {
        let i = cfg.layer_input_size(k);
        let names = native_names(k);
        let p = LayerParams {
            w_ih: take(st, &names[0], &[i, 3 * h], dtype, device)?,
            w_hh: take(st, &names[1], &[h, 3 * h], dtype, device)?,
            b_ih: take(st, &names[2], &[3 * h], dtype, device)?,
            b_hh: take(st, &names[3], &[3 * h], dtype, device)?,
        };
        expected.extend(names);
        layers.push(GruLayer::new(cfg.reset_mode, p)?);
    }
    let head = match cfg.output_size {
        Some(o) => {
            expected.extend(["head.w".to_string(), "head.b".to_string()]);
            Some(Head {
                w: take(st, "head.w", &[h, o], dtype, device)?,
                b: take(st, "head.b", &[o], dtype, device)?,
            })
        }
        None => None,
    };
    if let Some(extra) = st.names().into_iter().find(|n| !expected.contains(*n)) {
        return Err(NativeError::UnexpectedTensor {
            name: extra.to_string(),
            layers: cfg.num_layers,
            head: cfg.output_size,
        });
    }
    Ok(GruModel::new(cfg, layers, head)?)
}

/// Paths of a native model folder.
pub fn native_files(dir: &Path) -> [PathBuf; 2] {
    [dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE)]
}
