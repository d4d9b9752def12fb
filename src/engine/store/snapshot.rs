//! A live session to its stored form and back. The one conversion every
//! store and GetSessionState / `resume_snapshot` use.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::pb;
use crate::engine::owner::Owner;
use crate::engine::registry::{Registry, ServedModel};
use crate::engine::sessions::{Restored, Session};
use crate::engine::state::{LastReply, Saved, SessionData, StepOutcome};
use crate::engine::{ids, EngineError};

/// The snapshot format this build writes and reads.
pub const FORMAT: u32 = 1;

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `s` as stored, from its data `d` (the caller holds `s`'s lock).
pub fn of(s: &Session, d: &SessionData, ttl: Duration) -> pb::SessionSnapshot {
    let c = s.model.model.config();
    let idle = Instant::now().saturating_duration_since(d.last_used);
    let expires = SystemTime::now() + ttl.saturating_sub(idle);
    pb::SessionSnapshot {
        format: FORMAT,
        session_id: s.id.clone(),
        model: s.model.name.clone(),
        version: s.model.version,
        step_index: d.step_index,
        layers: c.num_layers as u32,
        hidden: c.hidden_size as u32,
        h: d.h.clone(),
        session_key: s.key.clone().unwrap_or_default(),
        owner_hash: s.owner.hash(),
        epoch: d.epoch,
        expires_at_unix_ms: unix_ms(expires),
        last: d.last.as_ref().map(|l| pb::LastStep {
            start_step: l.start_step,
            digest: l.digest,
            reply: l.kept.as_ref().map(|(o, _)| pb::KeptReply {
                outputs: o.outputs.clone(),
                next_step: o.next_step,
                state: o.state.clone(),
            }),
        }),
        released: false,
    }
}

/// Why a stored session cannot be made live (reported, then skipped).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot format {0} is not one this build reads (it reads {FORMAT})")]
    Format(u32),
    #[error("expired {0} ms ago")]
    Expired(u64),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Invalid(String),
}

/// A snapshot back into a session ready for [`crate::engine::SessionStore::restore`]:
/// its model must be served, its shapes the model's, its values finite.
/// `epoch` overrides the stored one (a takeover has just raised it).
/// The served model version a snapshot runs on, or why there is none here.
pub fn served_model(
    registry: &Registry,
    snap: &pb::SessionSnapshot,
) -> Result<Arc<ServedModel>, EngineError> {
    registry
        .get(&snap.model, Some(snap.version))
        .map_err(|e| match e {
            EngineError::ModelNotFound(_) | EngineError::VersionNotFound { .. } => {
                EngineError::SessionModelNotServed {
                    session: snap.session_id.clone(),
                    model: snap.model.clone(),
                    version: snap.version,
                }
            }
            other => other,
        })
}

pub fn restore(
    registry: &Registry,
    snap: pb::SessionSnapshot,
    epoch: Option<u64>,
    ttl: Duration,
) -> Result<Restored, RestoreError> {
    if snap.format != FORMAT {
        return Err(RestoreError::Format(snap.format));
    }
    ids::check_id("session_id", &snap.session_id)?;
    let model = served_model(registry, &snap)?;
    let c = model.model.config();
    let size = c.num_layers * c.hidden_size;
    if snap.layers as usize != c.num_layers
        || snap.hidden as usize != c.hidden_size
        || snap.h.len() != size
    {
        return Err(RestoreError::Invalid(format!(
            "h is {} layers × {} hidden with {} values; model '{}' version {} has {} × {}",
            snap.layers,
            snap.hidden,
            snap.h.len(),
            snap.model,
            snap.version,
            c.num_layers,
            c.hidden_size
        )));
    }
    if let Some(p) = snap.h.iter().position(|v| !v.is_finite()) {
        return Err(RestoreError::Invalid(format!("h[{p}] is not finite")));
    }
    if snap.step_index > ids::MAX_STEP_INDEX {
        return Err(RestoreError::Invalid(format!(
            "step_index {} is past the largest {}",
            snap.step_index,
            ids::MAX_STEP_INDEX
        )));
    }
    let now_ms = unix_ms(SystemTime::now());
    if snap.expires_at_unix_ms <= now_ms {
        return Err(RestoreError::Expired(now_ms - snap.expires_at_unix_ms));
    }
    // Idle time carries over: the session expires when it would have.
    let left = Duration::from_millis(snap.expires_at_unix_ms - now_ms).min(ttl);
    let now = Instant::now();
    let last_used = now.checked_sub(ttl - left).unwrap_or(now);
    let last = match snap.last {
        None => None,
        Some(l) => {
            let kept = match l.reply {
                None => None,
                Some(r) => {
                    let outputs_per_row = c.output_dim();
                    let rows = r.next_step.saturating_sub(l.start_step) as usize;
                    if r.state.len() != size
                        || rows == 0
                        || r.outputs.len() != rows * outputs_per_row
                        || r.next_step != snap.step_index
                    {
                        return Err(RestoreError::Invalid(format!(
                            "last reply: steps {}..{} with {} outputs and {} state values do not fit the session (at step {}, {} outputs per step)",
                            l.start_step,
                            r.next_step,
                            r.outputs.len(),
                            r.state.len(),
                            snap.step_index,
                            outputs_per_row
                        )));
                    }
                    let bytes = 4 * (r.outputs.len() + r.state.len()) as u64;
                    let outcome = Arc::new(StepOutcome {
                        outputs: r.outputs,
                        start_step: l.start_step,
                        next_step: r.next_step,
                        state: r.state,
                    });
                    // Over the reply budget: a retry is refused, as for a
                    // reply not kept when it was made.
                    registry.replies().charge(bytes).map(|c| (outcome, c))
                }
            };
            Some(LastReply {
                start_step: l.start_step,
                digest: l.digest,
                kept,
            })
        }
    };
    let epoch = epoch.unwrap_or(snap.epoch);
    Ok(Restored {
        id: snap.session_id,
        key: Some(snap.session_key).filter(|k| !k.is_empty()),
        owner: Owner::from_hash(snap.owner_hash),
        model,
        data: SessionData {
            h: snap.h,
            step_index: snap.step_index,
            last,
            closed: false,
            last_used,
            saved: Some(Saved {
                step_index: snap.step_index,
                last_used,
            }),
            epoch,
            unconfirmed: !snap.released,
        },
    })
}
