//! The crate's one atomic file write. It lives here, below the engine and
//! above the model core, so that the format writers and the engine's
//! records share it without an import running back up.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::model::ModelError;

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file system refused (create, write, sync or rename).
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path names no file (e.g. `/` or `..`).
    #[error("invalid input: {} is not a file path", .0.display())]
    NotAFile(PathBuf),
}

impl FileError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<FileError> for ModelError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io { path, source } => ModelError::Io { path, source },
            FileError::NotAFile(p) => {
                ModelError::Input(format!("{} is not a file path", p.display()))
            }
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a torn one: temp file in the same folder, fsync, rename, fsync
/// the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| FileError::NotAFile(path.to_path_buf()))?;
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
        FileError::io(path)(e)
    })
}
