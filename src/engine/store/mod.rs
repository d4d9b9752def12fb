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

mod file;
pub mod shared;
pub mod snapshot;

/// The stored session format (proto/gru/store/v1/snapshot.proto).
#[allow(clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/store/gru.store.v1.rs"));
}

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;

use super::registry::Registry;
use super::sessions::{owner_hash, Session, SessionStore};
use super::state::Saved;
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

/// How stale a session's stored expiry may get before a read-only use
/// rewrites it: a quarter of the TTL.
fn refresh(ttl: Duration) -> Duration {
    ttl / 4
}

/// One checkpoint: writes the sessions changed since the last (every live
/// session when `all`), and the removals. Returns how many were written.
pub async fn checkpoint(
    durable: &Arc<Durable>,
    sessions: &Arc<SessionStore>,
    all: bool,
) -> Result<usize, String> {
    if durable.is_memory() {
        return Ok(0);
    }
    let _one = durable.writing.lock().await;
    let started = Instant::now();
    let ttl = sessions.ttl();
    let result = match &durable.backend {
        Backend::Memory => Ok(0),
        Backend::File(_) => {
            let (d, s) = (durable.clone(), sessions.clone());
            tokio::task::spawn_blocking(move || checkpoint_file(&d, &s, all, ttl))
                .await
                .map_err(|e| format!("checkpoint task: {e}"))?
        }
        Backend::Redis(r) => checkpoint_redis(r, sessions, all, ttl).await,
    };
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("gru_session_checkpoints_total", "result" => outcome).increment(1);
    metrics::histogram!("gru_session_checkpoint_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    let mut last = durable.last_ok.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(n) = &result {
        *last = started;
        metrics::counter!("gru_session_checkpoint_sessions_total").increment(*n as u64);
    }
    metrics::gauge!("gru_session_checkpoint_lag_seconds").set(last.elapsed().as_secs_f64());
    result
}

/// Copies what a checkpoint writes, one session lock at a time. `releasing`:
/// the final flush, after which this process lets every session go.
fn copy(
    sessions: &SessionStore,
    all: bool,
    ttl: Duration,
    releasing: bool,
) -> Vec<(Arc<Session>, Saved, pb::SessionSnapshot)> {
    let picked = sessions.collect((!all).then(|| refresh(ttl)));
    picked
        .into_iter()
        .filter_map(|s| {
            let d = s.lock();
            if d.closed {
                return None;
            }
            let saved = Saved {
                step_index: d.step_index,
                last_used: d.last_used,
            };
            let mut snap = snapshot::of(&s, &d, ttl);
            // Still unconfirmed, it stays so: this copy may be behind too.
            snap.released = releasing && !d.unconfirmed;
            drop(d);
            Some((s, saved, snap))
        })
        .collect()
}

fn mark_saved(written: &[(Arc<Session>, Saved, pb::SessionSnapshot)]) {
    for (s, saved, _) in written {
        s.lock().saved = Some(*saved);
    }
}

fn checkpoint_file(
    durable: &Durable,
    sessions: &SessionStore,
    all: bool,
    ttl: Duration,
) -> Result<usize, String> {
    let Backend::File(store) = &durable.backend else {
        return Ok(0);
    };
    let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
    let full = all || store.wants_full();
    let removed: Vec<String> = sessions
        .take_removed()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let copied = copy(sessions, full, ttl, all);
    if copied.is_empty() && removed.is_empty() && !full {
        return Ok(0);
    }
    let snaps = copied.iter().map(|(_, _, p)| p.clone()).collect();
    match store.write(snaps, removed.clone(), full) {
        Ok(_) => {
            mark_saved(&copied);
            Ok(copied.len())
        }
        Err(e) => {
            metrics::counter!("gru_session_store_errors_total", "op" => "write").increment(1);
            sessions.return_removed(removed.into_iter().map(|id| (id, false)).collect());
            Err(e.to_string())
        }
    }
}

async fn checkpoint_redis(
    r: &shared::RedisStore,
    sessions: &Arc<SessionStore>,
    all: bool,
    ttl: Duration,
) -> Result<usize, String> {
    // Closes are deleted at once (see `close`); one that failed then is
    // retried here. Expiry needs nothing: Redis expires the keys itself, and
    // deleting here could remove a session another replica has taken over.
    let removed = sessions.take_removed();
    let mut failed = Vec::new();
    for (id, closed) in removed {
        if closed && r.delete(&id, ttl).await.is_err() {
            failed.push((id, true));
        }
    }
    if !failed.is_empty() {
        sessions.return_removed(failed);
    }
    let s = sessions.clone();
    let copied = tokio::task::spawn_blocking(move || copy(&s, all, ttl, all))
        .await
        .map_err(|e| format!("checkpoint task: {e}"))?;
    // Sessions opened while Redis was away are stored first (epoch 1).
    let mut items = Vec::with_capacity(copied.len());
    // written[item_at[i]] is items[i]'s session.
    let mut item_at = Vec::with_capacity(copied.len());
    let mut written = Vec::with_capacity(copied.len());
    for (s, saved, mut snap) in copied {
        if snap.epoch == 0 {
            if create(r, &s, &mut snap, ttl, true).await.is_err() {
                continue;
            }
        } else {
            item_at.push(written.len());
            items.push(shared::SaveItem {
                id: s.id.clone(),
                epoch: snap.epoch,
                snapshot: snap.encode_to_vec(),
                tenant: snap.owner_hash.clone(),
                key: s.key.clone(),
            });
        }
        written.push((s, saved, snap));
    }
    let n = written.len();
    if items.is_empty() {
        mark_saved(&written);
        return Ok(n);
    }
    // The final flush lets go of every session: the next replica takes
    // them without waiting for a handoff.
    let refused = r.save(items, ttl, all).await?;
    if all {
        let _ = r.heartbeat(true).await;
    }
    for i in &refused {
        let s = &written[item_at[*i]].0;
        // Another replica owns it now (or it was closed there): this copy
        // is stale and goes; the next call for it goes through the store.
        if sessions.drop_local(&s.id) {
            metrics::counter!("gru_session_takeovers_total", "result" => "lost").increment(1);
            tracing::info!(session_id = %s.id, "session taken over by another replica: local copy dropped");
        }
    }
    mark_saved(&written);
    Ok(n - refused.len())
}

/// Stores a session this replica opened; on success its epoch is 1.
/// `keyless`: when its key already names another session (both opened
/// while Redis was away), store this one without the key.
async fn create(
    r: &shared::RedisStore,
    s: &Session,
    snap: &mut pb::SessionSnapshot,
    ttl: Duration,
    keyless: bool,
) -> Result<shared::Created, String> {
    snap.epoch = 1;
    let created = r
        .create(
            &s.id,
            &snap.owner_hash,
            s.key.as_deref(),
            snap.encode_to_vec(),
            ttl,
        )
        .await;
    let created = match created {
        Ok(shared::Created::KeyTaken(_)) if keyless => r
            .create(&s.id, &snap.owner_hash, None, snap.encode_to_vec(), ttl)
            .await
            .map(|_| shared::Created::Created),
        other => other,
    }?;
    if matches!(created, shared::Created::Created) {
        s.lock().epoch = 1;
    }
    Ok(created)
}

/// Runs checkpoints every interval until `cancel`.
pub async fn run_checkpoints(
    durable: Arc<Durable>,
    sessions: Arc<SessionStore>,
    cancel: tokio_util::sync::CancellationToken,
) {
    if durable.is_memory() {
        return;
    }
    let mut tick = tokio::time::interval(durable.interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = checkpoint(&durable, &sessions, false).await {
            tracing::debug!(error = %e, "checkpoint failed; the changed sessions are kept for the next");
        }
    }
}

/// Listens for takeovers announced by other replicas and drops this
/// process's stale copies at once (a checkpoint would find out later),
/// so a session that moved does not answer from its old copy here; and
/// answers handoff requests for the sessions this replica holds.
pub async fn listen_takeovers(
    durable: Arc<Durable>,
    sessions: Arc<SessionStore>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let Some(r) = durable.redis() else { return };
    use tokio_stream::StreamExt;
    loop {
        let attempt = async {
            let mut ps = r.client().get_async_pubsub().await?;
            ps.subscribe(shared::TAKEOVERS).await?;
            ps.subscribe(shared::HANDOFFS).await?;
            let mut msgs = ps.on_message();
            while let Some(m) = msgs.next().await {
                let Ok(text) = m.get_payload::<String>() else {
                    continue;
                };
                if m.get_channel_name() == shared::HANDOFFS {
                    let mut parts = text.split(' ');
                    if let (Some(id), Some(from)) = (parts.next(), parts.next()) {
                        if from != r.replica() {
                            let (d, s, id) = (durable.clone(), sessions.clone(), id.to_string());
                            tokio::spawn(async move {
                                if let Some(r) = d.redis() {
                                    hand_over(r, &s, &id).await;
                                }
                            });
                        }
                    }
                    continue;
                }
                let mut parts = text.split(' ');
                let (Some(id), Some(epoch), Some(replica)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if replica == r.replica() {
                    continue;
                }
                if let Ok(epoch) = epoch.parse::<u64>() {
                    if sessions.drop_if_older(id, epoch) {
                        metrics::counter!("gru_session_takeovers_total", "result" => "lost")
                            .increment(1);
                        tracing::info!(session_id = %id, by = %replica, "session taken over by another replica: local copy dropped");
                    }
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => if let Err(e) = r {
                tracing::debug!(error = %e, "takeover notices: reconnecting");
            },
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Takes over session `id` from the shared store, if it holds it for this
/// tenant. Ok(false): not there (the caller's lookup will say NOT_FOUND).
pub async fn adopt(
    durable: &Durable,
    sessions: &SessionStore,
    registry: &Registry,
    id: &str,
    tenant: Option<&str>,
) -> Result<bool, EngineError> {
    let Some(r) = durable.redis() else {
        return Ok(false);
    };
    super::ids::check_id("session_id", id)?;
    let _one = durable.adopting.lock().await;
    if sessions.holds(id) {
        return Ok(true);
    }
    let tenant_hash = tenant.map(owner_hash).unwrap_or_default();
    let ttl = sessions.ttl();
    let started = Instant::now();
    handoff(durable, r, id).await;
    let Some((epoch, bytes)) = r
        .claim(id, &tenant_hash, ttl)
        .await
        .map_err(|e| durable.unavailable(id, e))?
    else {
        return Ok(false);
    };
    let snap = pb::SessionSnapshot::decode(bytes.as_slice())
        .map_err(|e| EngineError::Internal(format!("stored session '{id}' is undecodable: {e}")))?;
    let restored = snapshot::restore(registry, snap, Some(epoch), ttl).map_err(|e| match e {
        snapshot::RestoreError::Engine(e) => e,
        snapshot::RestoreError::Expired(_) => EngineError::SessionNotFound(id.to_string()),
        other => EngineError::Internal(format!("stored session '{id}': {other}")),
    })?;
    sessions.restore(restored)?;
    metrics::counter!("gru_session_takeovers_total", "result" => "taken").increment(1);
    metrics::histogram!("gru_session_takeover_seconds").record(started.elapsed().as_secs_f64());
    tracing::debug!(session_id = %id, epoch, "session taken over from the store");
    Ok(true)
}

/// How long a takeover waits for a live owner to hand the session over
/// before taking it as stored (the owner may be wedged, or gone without
/// its heartbeat having lapsed yet).
const HANDOFF_WAIT: Duration = Duration::from_millis(300);

/// When another live replica owns `id`, asks it to write its latest state
/// and let go, and waits (bounded) until it has: so a session moving
/// between live replicas (a rebalance, a flap-back) loses no step. A dead
/// owner's sessions are taken at once, as stored.
async fn handoff(durable: &Durable, r: &shared::RedisStore, id: &str) {
    if !matches!(r.owned_elsewhere(id).await, Ok(true)) {
        return;
    }
    if r.request_handoff(id).await.is_err() {
        return;
    }
    let deadline = Instant::now() + HANDOFF_WAIT;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
        match r.owned_elsewhere(id).await {
            Ok(false) => {
                metrics::counter!("gru_session_handoffs_total", "result" => "handed").increment(1);
                return;
            }
            Ok(true) => {}
            Err(_) => return,
        }
    }
    metrics::counter!("gru_session_handoffs_total", "result" => "timeout").increment(1);
    tracing::warn!(session_id = %id, store = %durable.label, "the owning replica did not hand the session over in time: taking it as last stored");
}

/// Answers a handoff request: this replica's copy of `id` stops (a step
/// still in the worker is answered NOT_FOUND), is written, and let go.
async fn hand_over(r: &shared::RedisStore, sessions: &SessionStore, id: &str) {
    let Some(s) = sessions.take_local(id) else {
        let _ = r.release(id).await;
        return;
    };
    let ttl = sessions.ttl();
    let snap = {
        let d = s.lock();
        let mut snap = snapshot::of(&s, &d, ttl);
        snap.released = !d.unconfirmed;
        snap
    };
    let item = shared::SaveItem {
        id: s.id.clone(),
        epoch: snap.epoch,
        snapshot: snap.encode_to_vec(),
        tenant: snap.owner_hash.clone(),
        key: s.key.clone(),
    };
    match r.save(vec![item], ttl, true).await {
        Ok(_) => tracing::debug!(session_id = %id, "session handed over"),
        Err(e) => {
            tracing::warn!(session_id = %id, error = %e, "handing a session over failed: the taker reads the last checkpoint")
        }
    }
}

/// Keeps this replica's heartbeat alive (other replicas ask a live owner
/// for a handoff, and take a dead one's sessions at once).
pub async fn run_heartbeat(durable: Arc<Durable>, cancel: tokio_util::sync::CancellationToken) {
    let Some(r) = durable.redis() else { return };
    loop {
        let _ = r.heartbeat(false).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(shared::ALIVE_FOR / 3) => {}
        }
    }
}

/// The id a tenant's key names in the shared store (None: not there, or no
/// shared store). An unreachable store is None: the open goes on here.
pub async fn lookup_key(durable: &Durable, tenant: Option<&str>, key: &str) -> Option<String> {
    let r = durable.redis()?;
    let hash = tenant.map(owner_hash).unwrap_or_default();
    r.lookup_key(&hash, key).await.ok().flatten()
}

/// Stores a session just opened here (shared store only). Ok(Some(id)):
/// its key already names session `id` elsewhere; the caller takes that one.
/// An unreachable store leaves it to the next checkpoint (epoch 0).
pub async fn created(
    durable: &Durable,
    sessions: &SessionStore,
    s: &Arc<Session>,
) -> Option<String> {
    let r = durable.redis()?;
    let ttl = sessions.ttl();
    let mut snap = {
        let d = s.lock();
        snapshot::of(s, &d, ttl)
    };
    match create(r, s, &mut snap, ttl, false).await {
        Ok(shared::Created::KeyTaken(other)) => Some(other),
        Ok(shared::Created::Created) => {
            let mut d = s.lock();
            if d.saved.is_none() && d.step_index == snap.step_index {
                d.saved = Some(Saved {
                    step_index: d.step_index,
                    last_used: d.last_used,
                });
            }
            None
        }
        Err(_) => None,
    }
}

/// Deletes a closed session from the shared store; a failure is retried by
/// the next checkpoint.
pub async fn closed(durable: &Durable, sessions: &SessionStore, id: &str) {
    if let Some(r) = durable.redis() {
        if r.delete(id, sessions.ttl()).await.is_ok() {
            sessions.forget_removed(id);
        }
    }
}
