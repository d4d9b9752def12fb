//! Publishing a new version into the repository, so that a crash at any
//! point leaves either no version or a whole one:
//!
//! 1. write the model to `<model-dir>/<name>/.tmp-<tag>/` (each file written
//!    and fsynced, then the folder fsynced);
//! 2. read it back with the real loader while it is still invisible;
//! 3. rename it to `<model-dir>/<name>/<version>/` and fsync `<name>/`;
//! 4. serve what was read back, so a restart serves the very same weights.
//!
//! A crash before 3 leaves a dot-folder that a scan never reads and the next
//! start deletes ([`clean_temporaries`]); after 3 the version is whole.

use std::path::{Path, PathBuf};

use super::{latest_on_disk, load_version_dir, Registry};
use crate::engine::EngineError;
use crate::formats::files::write_atomic;
use crate::formats::native::save_native;
use crate::model::{GruModel, ModelError};

/// Prefix of the folder a version is written in before its rename.
const TMP_PREFIX: &str = ".tmp-";

/// Inside a published version: where it came from (see [`Registry::publish`]).
pub const PROVENANCE_FILE: &str = "training.json";

/// Test hook: fail publication at this point, as a crash would (the
/// temporary folder is left behind). Never set in production.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFault {
    /// After the files are written and fsynced, before the rename.
    BeforeRename,
    /// The weights file comes out torn (half its bytes), as a failing disk
    /// or a bug would leave it; the check before the rename must catch it.
    TornWeights,
}

/// A version to publish.
pub struct NewVersion<'a> {
    pub model: &'a GruModel,
    /// Written to `serving.json`; shown by GetModel.
    pub description: &'a str,
    /// Unique per publication (a job id): names the temporary folder.
    pub tag: &'a str,
    #[doc(hidden)]
    pub fault: Option<PublishFault>,
}

/// Why a version could not be published. Nothing of it is visible then.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fsync {}: {source}", path.display())]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Write(#[from] ModelError),
    #[error("the written version does not load: {0}")]
    DoesNotLoad(String),
    #[error("injected fault after writing, before the rename")]
    InjectedFault,
    #[error("rename to {}: {source}", to.display())]
    Rename { to: PathBuf, source: std::io::Error },
    /// Written and renamed, but its worker could not start.
    #[error("{0}")]
    Serve(Box<EngineError>),
}

// The atomic writer's errors read as they did when it returned ModelError.
impl From<crate::formats::files::FileError> for PublishError {
    fn from(e: crate::formats::files::FileError) -> Self {
        PublishError::Write(e.into())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| PublishError::Sync {
            path: dir.to_path_buf(),
            source,
        })
}

impl Registry {
    /// Writes `new` as the next version of `name` (see the module docs for
    /// why each step is crash-safe), starts serving it and returns its
    /// number. `provenance(version)` is written to [`PROVENANCE_FILE`] inside
    /// the version, so whoever published it can find it after a crash
    /// between the rename and its own bookkeeping.
    pub fn publish(
        &self,
        name: &str,
        new: NewVersion<'_>,
        provenance: impl FnOnce(u64) -> serde_json::Value,
    ) -> Result<u64, PublishError> {
        // One change of the repository at a time (publications, rescans):
        // the version number is chosen, written and served under it.
        let _one_at_a_time = self.change_guard();
        let model_dir = &self.config.model_dir;
        let root = model_dir.join(name);
        let new_root = !root.exists();
        // A failed first publish leaves no empty model folder behind.
        let undo_root = || {
            if new_root {
                let _ = std::fs::remove_dir(&root);
            }
        };
        if new_root {
            std::fs::create_dir_all(&root).map_err(io_err(&root))?;
            sync_dir(model_dir)?;
        }
        let on_disk = latest_on_disk(&root).map_err(io_err(&root))?.unwrap_or(0);
        let served = self.versions(name).last().copied().unwrap_or(0);
        let version = on_disk.max(served) + 1;
        let tmp = root.join(format!("{TMP_PREFIX}{}", new.tag));
        let _ = std::fs::remove_dir_all(&tmp);
        let write = || -> Result<(), PublishError> {
            save_native(new.model, &tmp)?;
            let serving = serde_json::json!({ "description": new.description });
            write_atomic(&tmp.join("serving.json"), serving.to_string().as_bytes())?;
            write_atomic(
                &tmp.join(PROVENANCE_FILE),
                provenance(version).to_string().as_bytes(),
            )?;
            sync_dir(&tmp)
        };
        // Check it the way a restart would read it (finite weights, shapes,
        // config) while it is still invisible; only a whole, loadable version
        // is renamed into place.
        let checked = write().and_then(|()| {
            if new.fault == Some(PublishFault::TornWeights) {
                let f = tmp.join("model.safetensors");
                let len = std::fs::metadata(&f).map_err(io_err(&f))?.len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .and_then(|w| w.set_len(len / 2))
                    .map_err(io_err(&f))?;
            }
            load_version_dir(&tmp, self.device()).map_err(PublishError::DoesNotLoad)
        });
        let (loaded, meta) = match checked {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                undo_root();
                return Err(e);
            }
        };
        if new.fault == Some(PublishFault::BeforeRename) {
            return Err(PublishError::InjectedFault);
        }
        let dir = root.join(version.to_string());
        std::fs::rename(&tmp, &dir).map_err(|source| {
            let _ = std::fs::remove_dir_all(&tmp);
            undo_root();
            PublishError::Rename { to: dir, source }
        })?;
        sync_dir(&root)?;
        self.insert(name, version, loaded, meta)
            .map_err(|e| PublishError::Serve(Box::new(e)))?;
        Ok(version)
    }
}

/// Deletes `<model-dir>/<name>/.tmp-*` folders: publications cut off by a
/// crash before their rename.
pub(super) fn clean_temporaries(model_dir: &Path) {
    let Ok(models) = std::fs::read_dir(model_dir) else {
        return;
    };
    for model in models.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        let Ok(entries) = std::fs::read_dir(&model) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => {
                        tracing::warn!(folder = %e.path().display(), "removed a half-written model version")
                    }
                    Err(err) => {
                        tracing::warn!(folder = %e.path().display(), error = %err, "could not remove a half-written model version")
                    }
                }
            }
        }
    }
}
