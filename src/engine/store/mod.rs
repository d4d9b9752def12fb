//! Durable sessions: a session's h, step index and last reply kept beyond
//! this process, so a restart, a crash or another replica continues it.
//! One flag (`--session-store`) picks the backend:
//! - `memory`: nothing kept; sessions die with the process.
//! - `file[:DIR]`: checkpoint files, restored at start (one server; the
//!   default, under the model directory's `.sessions`).
//! - `redis://` / `rediss://`: a shared Redis with ownership epochs (several
//!   replicas): any replica takes a session over on its first call for it.
//!
//! Steps never wait for a store: they change sessions in memory, and a
//! checkpoint task writes the sessions changed since the last checkpoint,
//! every `--checkpoint-interval`, in batches. On shutdown every session is
//! written after the drain. What a crash loses is the steps since the last
//! checkpoint; the session comes back at its checkpointed step index, and a
//! client that sends `start_step` is told where to replay from.

mod checkpoint;
mod file;
pub mod shared;
pub mod snapshot;
mod takeover;

pub use checkpoint::{checkpoint, run_checkpoints};
pub use takeover::{adopt, closed, created, listen_takeovers, lookup_key, run_heartbeat};

/// The stored session format (proto/gru/store/v1/snapshot.proto).
#[allow(clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/store/gru.store.v1.rs"));
}

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::registry::Registry;
use super::sessions::SessionStore;
use super::EngineError;

/// Where sessions are kept (`--session-store`).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSpec {
    Memory,
    /// Checkpoint files in this folder; None: `--state-dir`, else the model
    /// directory's `.sessions`.
    File(Option<PathBuf>),
    /// A Redis URL (`redis://host:port[/db]`, `rediss://` for TLS).
    Redis(String),
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<StoreSpec, String> {
        let s = s.trim();
        if s == "memory" {
            Ok(StoreSpec::Memory)
        } else if s == "file" || s == "file:" {
            Ok(StoreSpec::File(None))
        } else if let Some(dir) = s.strip_prefix("file:") {
            Ok(StoreSpec::File(Some(PathBuf::from(dir))))
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            // Checked now, so a bad URL stops the start, not the first write.
            redis::Client::open(s)
                .map_err(|e| format!("'{}' is not a Redis URL: {e}", shared::redact(s)))?;
            Ok(StoreSpec::Redis(s.to_string()))
        } else {
            Err(format!(
                "unknown session store '{}': expected memory, file[:DIR], redis://HOST:PORT[/DB] or rediss://HOST:PORT[/DB]",
                shared::redact(s)
            ))
        }
    }
}

/// The session store's settings (`--session-store`, `--checkpoint-interval`,
/// `--state-dir`).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub spec: StoreSpec,
    pub checkpoint_interval: Duration,
    pub state_dir: Option<PathBuf>,
}

impl Default for StoreConfig {
    /// Memory: what an embedder (tests, the load generator) gets unless it
    /// asks; the command line's default is the file store.
    fn default() -> Self {
        StoreConfig {
            spec: StoreSpec::Memory,
            checkpoint_interval: Duration::from_secs(1),
            state_dir: None,
        }
    }
}

enum Backend {
    Memory,
    File(Mutex<file::FileStore>),
    Redis(Box<shared::RedisStore>),
}

/// The engine's side of a session store: checkpoints, restore, takeovers.
pub struct Durable {
    backend: Backend,
    interval: Duration,
    /// "memory", "file:DIR" or the Redis URL without its password.
    label: String,
    /// One checkpoint at a time (the periodic one and the final flush).
    writing: tokio::sync::Mutex<()>,
    /// One takeover at a time: two calls for one session must not both
    /// claim it (the second claim would fence out the first copy).
    adopting: tokio::sync::Mutex<()>,
    last_ok: Mutex<Instant>,
    /// Ends the takeover listener and the heartbeat after the final flush.
    stopped: tokio_util::sync::CancellationToken,
}

/// A stable id for this process among replicas: host, pid, and a random
/// suffix (pids repeat across restarts in containers).
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

impl Durable {
    /// Opens the store. The file store reads back its sessions here (the
    /// caller restores them); Redis connects lazily.
    pub fn open(
        config: &StoreConfig,
        model_dir: &Path,
    ) -> Result<(Durable, Vec<pb::SessionSnapshot>), String> {
        let (backend, label, restored) = match &config.spec {
            StoreSpec::Memory => (Backend::Memory, "memory".to_string(), Vec::new()),
            StoreSpec::File(dir) => {
                let chosen = dir.is_some() || config.state_dir.is_some();
                let dir = dir
                    .clone()
                    .or_else(|| config.state_dir.as_ref().map(|d| d.join("sessions")))
                    .unwrap_or_else(|| model_dir.join(".sessions"));
                let (store, loaded) = match file::FileStore::open(&dir) {
                    Ok(opened) => opened,
                    // The default place may be read-only (a mounted model
                    // volume): say so and keep serving, from memory.
                    Err(e) if !chosen => {
                        tracing::warn!(error = %e, "the default session store folder cannot be used: sessions are kept in memory only (set --state-dir, or --session-store redis:// for replicas)");
                        return Ok((
                            Durable::new(Backend::Memory, "memory".into(), config),
                            Vec::new(),
                        ));
                    }
                    Err(e) => return Err(format!("file:{}: {e}", dir.display())),
                };
                for p in &loaded.problems {
                    tracing::error!(problem = %p, "session checkpoint unreadable");
                    metrics::counter!("gru_session_restore_skipped_total", "reason" => "corrupt_file")
                        .increment(1);
                }
                let label = format!("file:{}", store.dir().display());
                tracing::info!(store = %label, files = loaded.files, sessions = loaded.sessions.len(), "session store opened");
                (Backend::File(Mutex::new(store)), label, loaded.sessions)
            }
            StoreSpec::Redis(url) => {
                let store = shared::RedisStore::new(url, replica_id())?;
                let label = store.label().to_string();
                tracing::info!(store = %label, replica = store.replica(), "session store: Redis");
                (Backend::Redis(Box::new(store)), label, Vec::new())
            }
        };
        Ok((Durable::new(backend, label, config), restored))
    }

    fn new(backend: Backend, label: String, config: &StoreConfig) -> Durable {
        // Present from the start (the alerts query them): nothing owed yet,
        // and a store is up until a call to it fails.
        metrics::gauge!("gru_session_store_up").set(1.0);
        metrics::gauge!("gru_session_checkpoint_lag_seconds").set(0.0);
        Durable {
            backend,
            interval: config.checkpoint_interval,
            label,
            writing: tokio::sync::Mutex::new(()),
            adopting: tokio::sync::Mutex::new(()),
            last_ok: Mutex::new(Instant::now()),
            stopped: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Cancelled once the final flush is done.
    pub fn stopped(&self) -> tokio_util::sync::CancellationToken {
        self.stopped.clone()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn is_memory(&self) -> bool {
        matches!(self.backend, Backend::Memory)
    }

    /// Whether sessions this process does not hold may live in the store
    /// (then a miss is looked up there before it is NOT_FOUND).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn redis(&self) -> Option<&shared::RedisStore> {
        match &self.backend {
            Backend::Redis(r) => Some(r),
            _ => None,
        }
    }

    fn unavailable(&self, session: &str, error: String) -> EngineError {
        EngineError::StoreUnavailable {
            session: session.to_string(),
            store: self.label.clone(),
            error,
        }
    }
}

/// Restores stored sessions into `sessions`; returns how many came back.
/// One that cannot (expired, model gone, bad shape) is logged and skipped.
pub fn restore_all(
    sessions: &SessionStore,
    registry: &Registry,
    snaps: Vec<pb::SessionSnapshot>,
) -> usize {
    let ttl = sessions.ttl();
    let mut n = 0;
    for snap in snaps {
        let id = snap.session_id.clone();
        match snapshot::restore(registry, snap, None, ttl).and_then(|r| Ok(sessions.restore(r)?)) {
            Ok(_) => n += 1,
            Err(snapshot::RestoreError::Expired(_)) => {
                metrics::counter!("gru_session_restore_skipped_total", "reason" => "expired")
                    .increment(1);
            }
            Err(e) => {
                tracing::warn!(session_id = %id, error = %e, "stored session not restored");
                metrics::counter!("gru_session_restore_skipped_total", "reason" => "invalid")
                    .increment(1);
            }
        }
    }
    metrics::counter!("gru_sessions_restored_total").increment(n as u64);
    n
}
