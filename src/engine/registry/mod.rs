//! The model repository on disk, laid out like Triton's:
//! `<model-dir>/<name>/<version>/` holding one of
//!
//! - a native model: `config.json` + `model.safetensors`;
//! - a PyTorch state dict: `pytorch.safetensors` (an `nn.GRU` + optional `nn.Linear`);
//! - an ONNX file: `model.onnx` (GRU node(s) + optional linear head);
//!
//! and optionally `serving.json`: `{"description": "...", "task": "regression",
//! "gru_prefix": "gru.", "head_prefix": "head."}` (task and prefixes matter
//! for imports; the description is shown by GetModel). Versions are positive
//! integers. A folder that fails to load is skipped with a log line.
//! New versions are written by [`Registry::publish`] (`publish.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use candle_core::Device;
use serde::Deserialize;

use super::batcher::Worker;
use super::replies::ReplyBudget;
use super::{EngineConfig, EngineError};
use crate::formats::native;
use crate::formats::pytorch::{self, PytorchNames};
use crate::model::{GruModel, Task};

mod publish;
pub use publish::{NewVersion, PublishError, PublishFault, PROVENANCE_FILE};

/// Optional per-version serving metadata (`serving.json`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingFile {
    #[serde(default)]
    pub description: String,
    pub task: Option<Task>,
    pub gru_prefix: Option<String>,
    pub head_prefix: Option<String>,
}

/// What GetModel reports beyond the model config.
#[derive(Debug, Clone)]
pub struct ModelMeta {
    pub description: String,
    pub source_format: &'static str,
}

/// One loaded model version with its compute worker.
pub struct ServedModel {
    pub name: String,
    pub version: u64,
    pub model: Arc<GruModel>,
    pub meta: ModelMeta,
    pub worker: Worker,
}

/// All served models: name → version → model.
pub struct Registry {
    models: RwLock<BTreeMap<String, BTreeMap<u64, Arc<ServedModel>>>>,
    config: EngineConfig,
    /// Held by a scan and by a publication's rename + insert, so a scan
    /// never loads a version that is being published.
    changing: Mutex<()>,
    /// Version folders that failed to load, with their newest mtime: a
    /// rescan retries them only once they change.
    failed: Mutex<HashMap<PathBuf, Option<SystemTime>>>,
    /// Shared by every worker: the bytes of last replies kept for retries.
    replies: Arc<ReplyBudget>,
}

/// Model names: non-empty, `[A-Za-z0-9._-]`, not starting with '.' (dot
/// folders are the server's own: job records, half-written versions).
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= super::ids::MAX_ID_LEN
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Loads one version folder.
pub fn load_version_dir(dir: &Path, device: &Device) -> Result<(GruModel, ModelMeta), String> {
    let serving: ServingFile = match std::fs::read(dir.join("serving.json")) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("serving.json: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ServingFile::default(),
        Err(e) => return Err(format!("serving.json: {e}")),
    };
    let task = serving.task.unwrap_or(Task::Regression);
    let (model, format) = if dir.join(native::CONFIG_FILE).exists() {
        (native::load_native(dir, device), "native")
    } else if dir.join("pytorch.safetensors").exists() {
        let names = PytorchNames {
            gru_prefix: serving.gru_prefix.clone(),
            head_prefix: serving.head_prefix.clone(),
        };
        (
            pytorch::import_pytorch(&dir.join("pytorch.safetensors"), &names, task, device),
            "pytorch",
        )
    } else if dir.join("model.onnx").exists() {
        (
            crate::formats::onnx::import_onnx(&dir.join("model.onnx"), task, device),
            "onnx",
        )
    } else {
        return Err(
            "no config.json + model.safetensors, pytorch.safetensors or model.onnx".to_string(),
        );
    };
    let model = model.map_err(|e| e.to_string())?;
    if let Some(t) = serving.task {
        if t != model.config().task {
            return Err(format!(
                "serving.json says task {t:?} but the model's config says {:?}",
                model.config().task
            ));
        }
    }
    Ok((
        model,
        ModelMeta {
            description: serving.description,
            source_format: format,
        },
    ))
}

/// The largest positive version number among `root`'s folder names.
fn latest_on_disk(root: &Path) -> std::io::Result<Option<u64>> {
    Ok(std::fs::read_dir(root)?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&v| v > 0)
        .max())
}

/// The newest modification time of a folder and the files in it: changes
/// when files are added, replaced or rewritten.
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let own = std::fs::metadata(dir).and_then(|m| m.modified()).ok();
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .chain(own)
        .max()
}

impl Registry {
    /// Deletes half-written versions left by a crash, then loads every
    /// version folder.
    pub fn load(config: &EngineConfig) -> Result<Registry, EngineError> {
        publish::clean_temporaries(&config.model_dir);
        let reg = Registry {
            models: RwLock::new(BTreeMap::new()),
            config: config.clone(),
            changing: Mutex::new(()),
            failed: Mutex::new(HashMap::new()),
            replies: ReplyBudget::new(config.max_retained_reply_bytes),
        };
        // A missing or unreadable directory is not fatal: the server stays
        // up, NOT_SERVING, says why (log, /readyz, `gru-serve health`) and
        // the rescans pick models up once the directory is there.
        match reg.scan() {
            Err(e @ EngineError::ModelDirUnreadable { .. }) => {
                tracing::error!(error = %e, "no model directory; NOT_SERVING until it exists and holds a model (--model-dir)");
            }
            other => {
                other?;
            }
        }
        Ok(reg)
    }

    /// Why nothing is served (for logs and /readyz), naming the directory.
    pub fn empty_reason(&self) -> String {
        let dir = &self.config.model_dir;
        match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
                "no model loaded: the model directory {} does not exist (--model-dir)",
                dir.display()
            ),
            Err(e) => format!(
                "no model loaded: the model directory {} cannot be read: {e}",
                dir.display()
            ),
            Ok(_) => format!(
                "no model loaded: {} holds no loadable <name>/<version>/ folder (failed ones are logged)",
                dir.display()
            ),
        }
    }

    /// Guards a change of the repository on disk that ends in an insert
    /// (see `changing`).
    pub fn change_guard(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads every version folder not served yet (at start, and on each
    /// `--model-poll` tick). Returns the (name, version)s it added.
    pub fn scan(&self) -> Result<Vec<(String, u64)>, EngineError> {
        let _guard = self.change_guard();
        let dir = &self.config.model_dir;
        let entries = std::fs::read_dir(dir).map_err(|error| EngineError::ModelDirUnreadable {
            dir: dir.clone(),
            error,
        })?;
        let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        let mut added = Vec::new();
        for path in names.into_iter().filter(|p| p.is_dir()) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !valid_model_name(&name) {
                if !name.starts_with('.') {
                    tracing::warn!(folder = %path.display(), "skipping model folder: names use [A-Za-z0-9._-]");
                }
                continue;
            }
            let Ok(versions) = std::fs::read_dir(&path) else {
                tracing::warn!(folder = %path.display(), "skipping unreadable model folder");
                continue;
            };
            let served = self.versions(&name);
            for v in versions.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
                let vname = v
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if vname.starts_with('.') {
                    continue;
                }
                let version = match vname.parse::<u64>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        tracing::warn!(model = %name, folder = %v.display(), "skipping version folder: versions are positive integers");
                        continue;
                    }
                };
                if served.contains(&version) {
                    continue;
                }
                let stamp = newest_mtime(&v);
                {
                    let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                    if failed.get(&v) == Some(&stamp) {
                        continue;
                    }
                }
                match load_version_dir(&v, &self.config.device) {
                    Ok((model, meta)) => {
                        let c = model.config();
                        tracing::info!(
                            model = %name, version, format = meta.source_format,
                            input = c.input_size, hidden = c.hidden_size, layers = c.num_layers,
                            reset_mode = c.reset_mode.as_str(), "loaded model"
                        );
                        self.insert(&name, version, model, meta)?;
                        self.failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&v);
                        added.push((name.clone(), version));
                    }
                    Err(e) => {
                        tracing::warn!(model = %name, version, folder = %v.display(), error = %e, "skipping model version that failed to load");
                        metrics::counter!("gru_model_load_failures_total").increment(1);
                        self.failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(v.clone(), stamp);
                    }
                }
            }
        }
        Ok(added)
    }

    /// Starts a worker for the model and serves it under (name, version).
    pub fn insert(
        &self,
        name: &str,
        version: u64,
        model: GruModel,
        meta: ModelMeta,
    ) -> Result<Arc<ServedModel>, EngineError> {
        let model = Arc::new(model);
        let worker = Worker::start(
            format!("{name}/{version}"),
            model.clone(),
            self.config.max_batch,
            self.config.worker_spin,
            self.config.queue_capacity,
            self.replies.clone(),
        )?;
        let served = Arc::new(ServedModel {
            name: name.to_string(),
            version,
            model,
            meta,
            worker,
        });
        self.models
            .write()
            .map_err(|_| EngineError::Internal("registry lock poisoned".into()))?
            .entry(name.to_string())
            .or_default()
            .insert(version, served.clone());
        Ok(served)
    }

    /// The model `name` at `version`, or its latest version.
    /// The server-wide budget for kept last replies (restored ones too).
    pub fn replies(&self) -> &Arc<ReplyBudget> {
        &self.replies
    }

    pub fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<ServedModel>, EngineError> {
        // The same answer from every RPC: a missing name is the caller's mistake.
        if name.is_empty() {
            return Err(EngineError::ModelRequired);
        }
        let models = self
            .models
            .read()
            .map_err(|_| EngineError::Internal("registry lock poisoned".into()))?;
        let versions = models
            .get(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        let found = match version {
            Some(v) => versions.get(&v),
            None => versions.values().next_back(),
        };
        found.cloned().ok_or_else(|| EngineError::VersionNotFound {
            name: name.to_string(),
            version: version.unwrap_or(0),
            available: versions.keys().copied().collect(),
        })
    }

    /// Every served model's latest version, and the list of its versions.
    pub fn list(&self) -> Vec<(Arc<ServedModel>, Vec<u64>)> {
        let Ok(models) = self.models.read() else {
            return Vec::new();
        };
        models
            .values()
            .filter_map(|vs| {
                let latest = vs.values().next_back()?.clone();
                Some((latest, vs.keys().copied().collect()))
            })
            .collect()
    }

    pub fn device(&self) -> &Device {
        &self.config.device
    }

    /// Every served version of every model.
    pub fn all(&self) -> Vec<Arc<ServedModel>> {
        let Ok(models) = self.models.read() else {
            return Vec::new();
        };
        models
            .values()
            .flat_map(|vs| vs.values().cloned())
            .collect()
    }

    pub fn versions(&self, name: &str) -> Vec<u64> {
        self.models
            .read()
            .ok()
            .and_then(|m| m.get(name).map(|v| v.keys().copied().collect()))
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.models.read().map(|m| m.is_empty()).unwrap_or(true)
    }

    /// Stops every worker and joins its thread.
    pub fn shutdown(&self) {
        if let Ok(models) = self.models.read() {
            for vs in models.values() {
                for m in vs.values() {
                    m.worker.stop();
                }
            }
        }
    }
}

/// `gru-serve export`: loads `<model_dir>/<name>/<version or latest>/` and
/// writes it as a PyTorch state dict; returns the model's config.
pub fn export_pytorch(
    model_dir: &Path,
    name: &str,
    version: Option<u64>,
    out: &Path,
    gru_prefix: &str,
    head_prefix: &str,
) -> Result<crate::model::ModelConfig, String> {
    let root = model_dir.join(name);
    let version = match version {
        Some(v) => v,
        None => latest_on_disk(&root)
            .map_err(|e| format!("model '{name}': {}: {e}", root.display()))?
            .ok_or_else(|| {
                format!(
                    "model '{name}' has no version folders in {}",
                    root.display()
                )
            })?,
    };
    let dir = root.join(version.to_string());
    let (model, _) =
        load_version_dir(&dir, &Device::Cpu).map_err(|e| format!("{}: {e}", dir.display()))?;
    pytorch::export_pytorch(&model, out, gru_prefix, head_prefix)
        .map_err(|e| format!("export to {}: {e}", out.display()))?;
    Ok(model.config().clone())
}
