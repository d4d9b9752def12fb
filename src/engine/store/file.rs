//! The file session store: checkpoint files in one folder, for a single
//! server. Each checkpoint is one file written atomically (temp file, fsync,
//! rename, like a model publish): a whole table (`full`) or the changes
//! since the previous file. A full table is written when the changes have
//! grown past it, at start and at shutdown; the files before it are then
//! removed. Restoring reads the newest good full table and the changes
//! after it; a file that fails its check is reported, set aside as
//! `*.corrupt`, and skipped whole: never half-loaded.
//!
//! A file: `GRUSESS1`, CRC-32 of the payload (u32 LE), payload length
//! (u64 LE), payload (a prost `SessionCheckpoint`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;

use super::pb;
use crate::formats::files::{write_atomic, FileError};

const MAGIC: &[u8; 8] = b"GRUSESS1";
const HEADER: usize = 8 + 4 + 8;
const PREFIX: &str = "ckpt-";
const SUFFIX: &str = ".gsnap";
/// Changes smaller than this never force a full table (an almost empty
/// table would otherwise be rewritten at every checkpoint).
const MIN_COMPACT_BYTES: u64 = 1 << 20;
/// Most change files between full tables (bounds the files a restore reads).
const MAX_DELTAS: usize = 256;

pub fn encode(ck: &pb::SessionCheckpoint) -> Vec<u8> {
    let payload = ck.encode_to_vec();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub fn decode(bytes: &[u8]) -> Result<pb::SessionCheckpoint, String> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err("not a gru-serve session checkpoint (bad header)".into());
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(format!(
            "truncated: {} payload bytes, header says {len}",
            payload.len()
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let ck = pb::SessionCheckpoint::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
    if ck.format != super::snapshot::FORMAT {
        return Err(format!(
            "format {} is not one this build reads ({})",
            ck.format,
            super::snapshot::FORMAT
        ));
    }
    Ok(ck)
}

fn file_name(seq: u64) -> String {
    format!("{PREFIX}{seq:020}{SUFFIX}")
}

fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// Takes the store's folder for this process: `DIR/.lock`, locked with
/// flock (released by the kernel when the process ends, however it ends).
/// Two servers writing one folder would delete each other's checkpoints.
fn lock_dir(dir: &Path) -> Result<std::fs::File, FileError> {
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(FileError::io(&path))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            return Err(FileError::io(&path)(std::io::Error::other(
                "in use by another gru-serve process: give each server its own --state-dir, or share sessions between replicas with --session-store redis://",
            )));
        }
    }
    Ok(f)
}

pub struct FileStore {
    /// Held while this process owns the folder (see [`lock_dir`]).
    lock: Option<std::fs::File>,
    dir: PathBuf,
    next_seq: u64,
    /// Files written since (and including) the last full table.
    files: Vec<PathBuf>,
    /// Files older than the last full table, removed once a newer full
    /// table is on disk.
    stale: Vec<PathBuf>,
    full_bytes: u64,
    delta_bytes: u64,
    deltas: usize,
    need_full: bool,
    /// Whether any checkpoint file exists (an empty store with nothing to
    /// write writes nothing).
    on_disk: bool,
}

/// What a restore found: the sessions, and what it had to skip.
pub struct Loaded {
    pub sessions: Vec<pb::SessionSnapshot>,
    pub problems: Vec<String>,
    pub files: usize,
}

impl FileStore {
    /// Opens `dir` and reads back what it holds. The folder is created by
    /// the first write (a server that never has a session leaves no trace),
    /// but its parent must be writable now: a store that cannot be written
    /// is refused at start, not at the first checkpoint.
    pub fn open(dir: &Path) -> Result<(FileStore, Loaded), FileError> {
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        let mut lock = None;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => {
                lock = Some(lock_dir(dir)?);
                Some(e)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                probe_writable(dir)?;
                None
            }
            Err(e) => return Err(FileError::io(dir)(e)),
        };
        for entry in entries.into_iter().flatten() {
            let entry = entry.map_err(FileError::io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                // A write a crash interrupted before its rename: never data.
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(seq) = seq_of(&name) {
                found.push((seq, entry.path()));
            }
        }
        found.sort();
        let mut problems = Vec::new();
        let mut read: Vec<(u64, PathBuf, pb::SessionCheckpoint)> = Vec::new();
        for (seq, path) in &found {
            match std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| decode(&b))
            {
                Ok(ck) => read.push((*seq, path.clone(), ck)),
                Err(e) => {
                    let aside = path.with_extension("gsnap.corrupt");
                    let _ = std::fs::rename(path, &aside);
                    problems.push(format!(
                        "{}: {e}; skipped (kept as {})",
                        path.display(),
                        aside.display()
                    ));
                }
            }
        }
        let start = read.iter().rposition(|(_, _, ck)| ck.full).unwrap_or(0);
        let mut table: HashMap<String, pb::SessionSnapshot> = HashMap::new();
        for (_, _, ck) in read.drain(..).skip(start) {
            if ck.full {
                table.clear();
            }
            for s in ck.sessions {
                table.insert(s.session_id.clone(), s);
            }
            for id in ck.removed {
                table.remove(&id);
            }
        }
        let next_seq = found.last().map_or(1, |(s, _)| s + 1);
        let store = FileStore {
            lock,
            dir: dir.to_path_buf(),
            next_seq,
            files: Vec::new(),
            stale: found.iter().map(|(_, p)| p.clone()).collect(),
            full_bytes: 0,
            delta_bytes: 0,
            deltas: 0,
            // The next write is a full table: the files read here go.
            need_full: true,
            on_disk: !found.is_empty(),
        };
        let loaded = Loaded {
            sessions: table.into_values().collect(),
            problems,
            files: found.len(),
        };
        Ok((store, loaded))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the next checkpoint should be a whole table.
    pub fn wants_full(&self) -> bool {
        self.need_full
            || self.deltas >= MAX_DELTAS
            || self.delta_bytes > self.full_bytes.max(MIN_COMPACT_BYTES)
    }

    /// Writes one checkpoint; returns its size in bytes. A full table
    /// replaces every earlier file, which is then removed.
    pub fn write(
        &mut self,
        sessions: Vec<pb::SessionSnapshot>,
        removed: Vec<String>,
        full: bool,
    ) -> Result<u64, FileError> {
        if sessions.is_empty() && removed.is_empty() && !self.on_disk {
            return Ok(0);
        }
        if self.lock.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(FileError::io(&self.dir))?;
            self.lock = Some(lock_dir(&self.dir)?);
        }
        let seq = self.next_seq;
        let ck = pb::SessionCheckpoint {
            format: super::snapshot::FORMAT,
            sequence: seq,
            full,
            sessions,
            removed: if full { Vec::new() } else { removed },
            written_unix_ms: super::snapshot::unix_ms(std::time::SystemTime::now()),
        };
        let bytes = encode(&ck);
        let path = self.dir.join(file_name(seq));
        write_atomic(&path, &bytes)?;
        self.on_disk = true;
        self.next_seq += 1;
        let n = bytes.len() as u64;
        if full {
            // Only once the new table is on disk do the old files go.
            for old in self.stale.drain(..).chain(self.files.drain(..)) {
                let _ = std::fs::remove_file(old);
            }
            self.full_bytes = n;
            self.delta_bytes = 0;
            self.deltas = 0;
            self.need_full = false;
        } else {
            self.delta_bytes += n;
            self.deltas += 1;
        }
        self.files.push(path);
        Ok(n)
    }
}

/// Fails unless a folder could be created at `dir`: its nearest existing
/// ancestor must be a writable folder (checked by creating a temp file).
fn probe_writable(dir: &Path) -> Result<(), FileError> {
    let mut base = dir.parent();
    while let Some(b) = base {
        if b.as_os_str().is_empty() {
            base = Some(Path::new("."));
            break;
        }
        if b.exists() {
            break;
        }
        base = b.parent();
    }
    let base = base.unwrap_or(Path::new("."));
    let probe = base.join(format!(".gru-serve-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(FileError::io(base))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, step: u64) -> pb::SessionSnapshot {
        pb::SessionSnapshot {
            format: 1,
            session_id: id.into(),
            step_index: step,
            h: vec![step as f32; 4],
            ..Default::default()
        }
    }

    fn ids(l: &Loaded) -> Vec<(String, u64)> {
        let mut v: Vec<_> = l
            .sessions
            .iter()
            .map(|s| (s.session_id.clone(), s.step_index))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn changes_apply_over_the_full_table_and_a_full_table_removes_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let (mut st, l) = FileStore::open(dir.path()).unwrap();
        assert!(l.sessions.is_empty() && l.problems.is_empty());
        assert!(st.wants_full());
        st.write(vec![snap("a", 1), snap("b", 1)], vec![], true)
            .unwrap();
        st.write(vec![snap("a", 5)], vec!["b".into()], false)
            .unwrap();
        st.write(vec![snap("c", 2)], vec![], false).unwrap();
        drop(st); // the process ends: its lock goes
        let (mut st2, l) = FileStore::open(dir.path()).unwrap();
        assert_eq!(ids(&l), [("a".into(), 5), ("c".into(), 2)]);
        assert_eq!(l.files, 3);
        st2.write(l.sessions, vec![], true).unwrap();
        drop(st2);
        let left = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| seq_of(&e.as_ref().unwrap().file_name().to_string_lossy()).is_some())
            .count();
        assert_eq!(left, 1, "a full table replaces the files before it");
        let (_, l) = FileStore::open(dir.path()).unwrap();
        assert_eq!(ids(&l), [("a".into(), 5), ("c".into(), 2)]);
    }

    #[test]
    fn a_corrupt_file_is_reported_set_aside_and_skipped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut st, _) = FileStore::open(dir.path()).unwrap();
        st.write(vec![snap("a", 1)], vec![], true).unwrap();
        st.write(vec![snap("a", 2), snap("b", 2)], vec![], false)
            .unwrap();
        st.write(vec![snap("c", 3)], vec![], false).unwrap();
        drop(st);
        // Flip one payload byte of the middle file.
        let mid = dir.path().join(file_name(2));
        let mut bytes = std::fs::read(&mid).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&mid, bytes).unwrap();
        // And a torn temp file a crash left behind.
        std::fs::write(dir.path().join(".ckpt-x.gsnap.tmp-1"), b"GRU").unwrap();
        let (_, l) = FileStore::open(dir.path()).unwrap();
        assert_eq!(ids(&l), [("a".into(), 1), ("c".into(), 3)]);
        assert_eq!(l.problems.len(), 1, "{:?}", l.problems);
        assert!(
            l.problems[0].contains("checksum mismatch"),
            "{:?}",
            l.problems
        );
        assert!(mid.with_extension("gsnap.corrupt").exists());
        assert!(!dir.path().join(".ckpt-x.gsnap.tmp-1").exists());
    }

    #[test]
    fn one_folder_serves_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, _) = FileStore::open(dir.path()).unwrap();
        first.write(vec![snap("a", 1)], vec![], true).unwrap();
        let Err(e) = FileStore::open(dir.path()) else {
            panic!("a second store on one folder must be refused");
        };
        assert!(e.to_string().contains("in use by another"), "{e}");
        drop(first);
        let (_, l) = FileStore::open(dir.path()).unwrap();
        assert_eq!(ids(&l), [("a".into(), 1)]);
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let ck = pb::SessionCheckpoint {
            format: 1,
            sessions: vec![snap("a", 1)],
            ..Default::default()
        };
        let bytes = encode(&ck);
        assert!(decode(&bytes).is_ok());
        assert!(decode(&bytes[..bytes.len() - 3])
            .unwrap_err()
            .contains("truncated"));
        assert!(decode(b"PK\x03\x04 not ours at all")
            .unwrap_err()
            .contains("bad header"));
        let future = encode(&pb::SessionCheckpoint {
            format: 2,
            ..Default::default()
        });
        assert!(decode(&future).unwrap_err().contains("format 2"));
    }
}
