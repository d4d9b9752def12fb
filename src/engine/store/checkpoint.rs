//! Checkpoints: the sessions changed since the last one written to the
//! store (every one at the final flush), in batches, off the step path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use super::{pb, shared, snapshot, Backend, Durable};
use crate::engine::sessions::{Session, SessionStore};
use crate::engine::state::Saved;

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
pub(super) async fn create(
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
