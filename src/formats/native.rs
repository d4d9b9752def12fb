//! Weights in and out.
//!
//! - **Native**: a folder with `config.json` ([`ModelConfig`]) and
//!   `model.safetensors` holding the internal layout (see `layer.rs`):
//!   `layers.{k}.w_ih` [I_k, 3H], `layers.{k}.w_hh` [H, 3H],
//!   `layers.{k}.b_ih` [3H], `layers.{k}.b_hh` [3H], and with a head
//!   `head.w` [H, O], `head.b` [O]. Loading checks every tensor's name, shape,
//!   dtype and finiteness against the config.
//! - **PyTorch**: an `nn.GRU` state dict (`weight_ih_l{k}`, `weight_hh_l{k}`,
//!   `bias_ih_l{k}`, `bias_hh_l{k}` under any prefix) with an optional
//!   `nn.Linear` head (`weight`, `bias`), as safetensors.
//! - **ONNX**: [`model_from_onnx_layers`] takes the arrays of GRU nodes; the
//!   protobuf parsing lives in `crate::onnx`, outside the model core.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use super::config::{ModelConfig, Precision, ResetMode, Task, FORMAT_VERSION};
use super::error::ModelError;
use super::layer::{self, GruLayer, LayerParams};
use super::network::{GruModel, Head};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Largest weights file read into memory (4 GiB): a bound against a corrupt
/// or hostile file, well above any GRU this server is for.
pub const MAX_WEIGHTS_BYTES: u64 = 4 << 30;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a torn one: temp file in the same folder, fsync, rename, fsync
/// the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| ModelError::Input(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

fn read_limited(path: &Path) -> Result<Vec<u8>, ModelError> {
    let len = std::fs::metadata(path).map_err(io_err(path))?.len();
    if len > MAX_WEIGHTS_BYTES {
        return Err(ModelError::Weights(format!(
            "{}: {len} bytes is over the {MAX_WEIGHTS_BYTES}-byte limit",
            path.display()
        )));
    }
    std::fs::read(path).map_err(io_err(path))
}

fn parse_safetensors<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>, ModelError> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        ModelError::Weights(format!(
            "{}: not a valid safetensors file ({e})",
            path.display()
        ))
    })
}

fn check_finite(name: &str, t: &Tensor) -> Result<(), ModelError> {
    let bad = t
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?
        .iter()
        .position(|v| !v.is_finite());
    match bad {
        Some(i) => Err(ModelError::Weights(format!(
            "tensor '{name}' holds a non-finite value at flat index {i}"
        ))),
        None => Ok(()),
    }
}

/// Reads one tensor from a safetensors file, checking dtype, shape and values.
fn take(
    st: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor, ModelError> {
    let view = st
        .tensor(name)
        .map_err(|_| ModelError::Weights(format!("missing tensor '{name}'")))?;
    let found = st_dtype(view.dtype()).ok_or_else(|| {
        ModelError::Weights(format!(
            "tensor '{name}' has unsupported dtype {:?}",
            view.dtype()
        ))
    })?;
    if found != dtype {
        return Err(ModelError::Weights(format!(
            "tensor '{name}' is {found:?}, expected {dtype:?}"
        )));
    }
    if view.shape() != shape {
        return Err(ModelError::Weights(format!(
            "tensor '{name}' has shape {:?}, expected {shape:?}",
            view.shape()
        )));
    }
    let t = Tensor::from_raw_buffer(view.data(), dtype, shape, device)?;
    check_finite(name, &t)?;
    Ok(t)
}

fn st_dtype(d: safetensors::Dtype) -> Option<DType> {
    match d {
        safetensors::Dtype::F32 => Some(DType::F32),
        safetensors::Dtype::F64 => Some(DType::F64),
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        _ => None,
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
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
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
    let bytes = safetensors::serialize(tensors, Some(meta.into_iter().collect()))
        .map_err(|e| ModelError::Weights(format!("serialize: {e}")))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    let cfg = serde_json::to_vec_pretty(model.config())
        .map_err(|e| ModelError::Internal(format!("serialize config: {e}")))?;
    write_atomic(&dir.join(CONFIG_FILE), &cfg)
}

/// Reads `config.json` of a native model folder.
pub fn load_config(dir: &Path) -> Result<ModelConfig, ModelError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&path).map_err(io_err(&path))?;
    // Check the version before the rest, so a newer format says so plainly.
    let raw: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    match raw.get("format_version") {
        Some(v) if v.as_u64() == Some(FORMAT_VERSION as u64) => {}
        Some(v) if v.is_u64() => {
            return Err(ModelError::Config(format!(
                "{}: unknown format_version {v} (this build reads version {FORMAT_VERSION})",
                path.display()
            )))
        }
        Some(v) => {
            return Err(ModelError::Config(format!(
                "{}: format_version is {v}, expected an unsigned integer",
                path.display()
            )))
        }
        None => {
            return Err(ModelError::Config(format!(
                "{}: missing format_version",
                path.display()
            )))
        }
    }
    let cfg: ModelConfig = serde_json::from_value(raw)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    cfg.validate().map_err(|e| match e {
        ModelError::Config(m) => ModelError::Config(format!("{}: {m}", path.display())),
        other => other,
    })?;
    Ok(cfg)
}

/// Loads a native model folder onto `device`.
pub fn load_native(dir: &Path, device: &Device) -> Result<GruModel, ModelError> {
    let cfg = load_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = read_limited(&path)?;
    let st = parse_safetensors(&bytes, &path)?;
    native_from_safetensors(cfg, &st, device).map_err(|e| annotate(e, &path.display().to_string()))
}

fn native_from_safetensors(
    cfg: ModelConfig,
    st: &SafeTensors<'_>,
    device: &Device,
) -> Result<GruModel, ModelError> {
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
        return Err(ModelError::Weights(format!(
            "unexpected tensor '{extra}' (config: {} layers, head {:?})",
            cfg.num_layers, cfg.output_size
        )));
    }
    GruModel::new(cfg, layers, head)
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

/// Imports a PyTorch `nn.GRU` (+ optional `nn.Linear`) state dict saved as safetensors.
pub fn import_pytorch(
    path: &Path,
    names: &PytorchNames,
    task: Task,
    device: &Device,
) -> Result<GruModel, ModelError> {
    let bytes = read_limited(path)?;
    let st = parse_safetensors(&bytes, path)?;
    import_pytorch_tensors(&st, names, task, device)
        .map_err(|e| annotate(e, &format!("{}", path.display())))
}

fn annotate(e: ModelError, what: &str) -> ModelError {
    match e {
        ModelError::Weights(m) => ModelError::Weights(format!("{what}: {m}")),
        other => other,
    }
}

fn import_pytorch_tensors(
    st: &SafeTensors<'_>,
    names: &PytorchNames,
    task: Task,
    device: &Device,
) -> Result<GruModel, ModelError> {
    let all: Vec<&str> = st.names();
    let prefix = match &names.gru_prefix {
        Some(p) => p.clone(),
        None => {
            let found: BTreeSet<&str> = all
                .iter()
                .filter_map(|n| n.strip_suffix("weight_ih_l0"))
                .collect();
            match found.len() {
                1 => found.into_iter().next().unwrap_or_default().to_string(),
                0 => {
                    return Err(ModelError::Weights(
                        "no 'weight_ih_l0' tensor: not an nn.GRU state dict".into(),
                    ))
                }
                _ => {
                    return Err(ModelError::Weights(format!(
                    "several GRUs in the state dict (prefixes {found:?}); name the one to import"
                )))
                }
            }
        }
    };
    if let Some(rev) = all
        .iter()
        .find(|n| n.starts_with(&prefix) && n.ends_with("_reverse"))
    {
        return Err(ModelError::Unsupported(format!(
            "'{rev}': bidirectional GRUs are not served (a session steps forward in time)"
        )));
    }
    let view = |n: &str| st.tensor(n).ok();
    let first = view(&format!("{prefix}weight_ih_l0"))
        .ok_or_else(|| ModelError::Weights(format!("missing tensor '{prefix}weight_ih_l0'")))?;
    let dtype = st_dtype(first.dtype())
        .filter(|d| matches!(d, DType::F32 | DType::F64))
        .ok_or_else(|| {
            ModelError::Weights(format!(
                "'{prefix}weight_ih_l0' is {:?}; import f32 or f64 weights",
                first.dtype()
            ))
        })?;
    let (h3, input_size) = match first.shape() {
        [a, b] => (*a, *b),
        s => {
            return Err(ModelError::Weights(format!(
                "'{prefix}weight_ih_l0' has shape {s:?}, expected [3H, I]"
            )))
        }
    };
    if h3 % 3 != 0 || h3 == 0 {
        return Err(ModelError::Weights(format!(
            "'{prefix}weight_ih_l0' has {h3} rows, not a positive multiple of 3"
        )));
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
            |name: String, shape: &[usize], optional: bool| -> Result<Tensor, ModelError> {
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
        layers.push(GruLayer::from_pytorch(&w_ih, &w_hh, &b_ih, &b_hh)?);
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
        return Err(ModelError::Weights(format!(
            "tensor '{stray}' under the GRU prefix '{prefix}' is not part of an nn.GRU with {num_layers} layers"
        )));
    }
    let head_prefix = match &names.head_prefix {
        Some(p) => Some(p.clone()),
        None => {
            let cands: Vec<&str> = all
                .iter()
                .filter(|n| !used.contains(**n))
                .filter_map(|n| n.strip_suffix("weight"))
                .collect();
            match cands.len() {
                0 => None,
                1 => Some(cands[0].to_string()),
                _ => {
                    return Err(ModelError::Weights(format!(
                        "several candidate heads ({cands:?}weight); name the head prefix"
                    )))
                }
            }
        }
    };
    let head = match &head_prefix {
        None => None,
        Some(p) => {
            let wname = format!("{p}weight");
            let w = st
                .tensor(&wname)
                .map_err(|_| ModelError::Weights(format!("missing tensor '{wname}'")))?;
            let o = match w.shape() {
                [o, hh] if *hh == h => *o,
                s => {
                    return Err(ModelError::Weights(format!(
                        "head '{wname}' has shape {s:?}, expected [O, {h}]"
                    )))
                }
            };
            let weight = take(st, &wname, &[o, h], dtype, device)?;
            let bname = format!("{p}bias");
            let bias = if st.tensor(&bname).is_ok() {
                take(st, &bname, &[o], dtype, device)?
            } else {
                Tensor::zeros(o, dtype, device)?
            };
            Some(Head::from_pytorch(&weight, &bias)?)
        }
    };
    let mut cfg = ModelConfig::new(input_size, h, num_layers)
        .with_reset_mode(ResetMode::AfterMatmul)
        .with_task(task)
        .with_dtype(Precision::from_dtype(dtype)?);
    cfg.output_size = head.as_ref().map(|hd| hd.b.dims()[0]);
    GruModel::new(cfg, layers, head)
}

/// Exports an `after_matmul` model as a PyTorch state dict in safetensors:
/// `{gru_prefix}weight_ih_l{k}` … and, with a head, `{head_prefix}weight`/`bias`.
pub fn export_pytorch(
    model: &GruModel,
    path: &Path,
    gru_prefix: &str,
    head_prefix: &str,
) -> Result<(), ModelError> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (k, l) in model.layers().iter().enumerate() {
        let [wi, wh, bi, bh] = l.to_pytorch()?;
        tensors.push((format!("{gru_prefix}weight_ih_l{k}"), wi));
        tensors.push((format!("{gru_prefix}weight_hh_l{k}"), wh));
        tensors.push((format!("{gru_prefix}bias_ih_l{k}"), bi));
        tensors.push((format!("{gru_prefix}bias_hh_l{k}"), bh));
    }
    if let Some(h) = model.head() {
        let [w, b] = h.to_pytorch()?;
        tensors.push((format!("{head_prefix}weight"), w));
        tensors.push((format!("{head_prefix}bias"), b));
    }
    let bytes = safetensors::serialize(tensors, None)
        .map_err(|e| ModelError::Weights(format!("serialize: {e}")))?;
    write_atomic(path, &bytes)
}

/// One ONNX GRU node's arrays: W [3H, I], R [3H, H], B [6H] (gate blocks z, r, h).
pub struct OnnxLayerArrays {
    pub w: Tensor,
    pub r: Tensor,
    pub b: Option<Tensor>,
    pub linear_before_reset: bool,
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
            GruLayer::from_onnx(&n.w, &n.r, n.b.as_ref(), n.linear_before_reset)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (i, h) = (layers[0].input_size(), layers[0].hidden_size());
    let head = match head {
        Some((w, b)) => {
            check_finite("head weight", &w)?;
            check_finite("head bias", &b)?;
            Some(Head::from_pytorch(&w, &b)?)
        }
        None => None,
    };
    let mut cfg = ModelConfig::new(i, h, layers.len())
        .with_reset_mode(layers[0].mode())
        .with_task(task)
        .with_dtype(Precision::from_dtype(layers[0].w_ih.dtype())?);
    cfg.output_size = head.as_ref().map(|hd| hd.b.dims()[0]);
    GruModel::new(cfg, layers, head)
}

/// The ONNX arrays (W, R, B) of every layer, bottom first.
pub fn onnx_layer_arrays(model: &GruModel) -> Result<Vec<[Tensor; 3]>, ModelError> {
    model.layers().iter().map(layer::to_onnx).collect()
}

/// Paths of a native model folder.
pub fn native_files(dir: &Path) -> [PathBuf; 2] {
    [dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE)]
}
