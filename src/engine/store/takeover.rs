//! Sessions moving between replicas through the shared store: takeover on
//! a miss (by id or key), handoff from a live owner, the heartbeat, and the
//! announcements that make the loser drop its copy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use super::checkpoint::create;
use super::{pb, shared, snapshot, Durable};
use crate::engine::owner::owner_hash;
use crate::engine::registry::Registry;
use crate::engine::sessions::{Session, SessionStore};
use crate::engine::state::Saved;
use crate::engine::EngineError;

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
    crate::engine::ids::check_id("session_id", id)?;
    let _one = durable.adopting.lock().await;
    if sessions.holds(id) {
        return Ok(true);
    }
    let tenant_hash = tenant.map(owner_hash).unwrap_or_default();
    let ttl = sessions.ttl();
    let started = Instant::now();
    // A replica that does not serve the session's model must not take it:
    // the handoff would make the owner let go and the claim would fence it
    // out, for a session this replica then cannot serve. Checked on the
    // stored copy first (one read), so the owner is never disturbed.
    if let Some(bytes) = r
        .peek_snapshot(id, &tenant_hash)
        .await
        .map_err(|e| durable.unavailable(id, e))?
    {
        if let Ok(snap) = pb::SessionSnapshot::decode(bytes.as_slice()) {
            snapshot::served_model(registry, &snap)?;
        }
    }
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
    let restored = match snapshot::restore(registry, snap, Some(epoch), ttl) {
        Ok(r) => r,
        Err(e) => {
            // Claimed but not restorable here: let go, so the next replica
            // to ask takes it at once rather than waiting for a handoff.
            let _ = r.release(id).await;
            return Err(match e {
                snapshot::RestoreError::Engine(e) => e,
                snapshot::RestoreError::Expired(_) => EngineError::SessionNotFound(id.to_string()),
                other => EngineError::Internal(format!("stored session '{id}': {other}")),
            });
        }
    };
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
