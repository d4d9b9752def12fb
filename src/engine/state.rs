//! A session's mutable state, the part the compute worker reads and writes:
//! h, the step index and the last reply. It sits below both the session
//! store and the batcher, so the worker holds this and not a `Session`
//! (which names its served model, which owns the worker).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::replies::ReplyCharge;

/// A hidden state as a client declares it: `values` is [layers × hidden],
/// layer 0 first. Checked against the model before use.
#[derive(Debug, Clone, PartialEq)]
pub struct HiddenState {
    pub layers: usize,
    pub hidden: usize,
    pub values: Vec<f32>,
}

/// The result of one step message.
#[derive(Debug, Clone, Default)]
pub struct StepOutcome {
    /// [k × output] row-major.
    pub outputs: Vec<f32>,
    pub start_step: u64,
    pub next_step: u64,
    /// h after the last step, [layers × hidden].
    pub state: Vec<f32>,
}

/// The last answered step message, kept to answer its retry. Its outcome
/// is kept only while the server-wide reply budget has room for it.
pub struct LastReply {
    pub start_step: u64,
    pub digest: u64,
    /// None when the budget was full: a retry is then refused, not replayed.
    pub kept: Option<(Arc<StepOutcome>, ReplyCharge)>,
}

pub struct SessionData {
    /// [layers × hidden].
    pub h: Vec<f32>,
    pub step_index: u64,
    pub last: Option<LastReply>,
    pub closed: bool,
    pub last_used: Instant,
    /// What the session store last wrote of this session (see
    /// [`SessionData::is_dirty`]); None: never written.
    pub saved: Option<Saved>,
    /// Ownership epoch in a shared store (0: not yet written there). A
    /// write with a stale epoch is refused and this copy dropped.
    pub epoch: u64,
    /// Restored from a checkpoint its owner did not let go of (a crash):
    /// steps after it may be lost, so the next message must name its start
    /// step (and so learn where the session is) rather than step blindly.
    pub unconfirmed: bool,
}

/// The step index and use time of a session's last stored snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    pub step_index: u64,
    pub last_used: Instant,
}

impl SessionData {
    /// Whether the store's copy is behind: a step was applied since it was
    /// written, or the session was used long enough after it that the
    /// stored expiry would come too early (`refresh`, a fraction of the TTL).
    pub fn is_dirty(&self, refresh: std::time::Duration) -> bool {
        match self.saved {
            None => true,
            Some(s) => {
                s.step_index != self.step_index
                    || self.last_used.saturating_duration_since(s.last_used) > refresh
            }
        }
    }
}

/// One session's state behind its lock, with the id the worker's refusals
/// name.
pub struct SessionState {
    pub id: String,
    data: Mutex<SessionData>,
}

impl SessionState {
    pub fn new(id: String, data: SessionData) -> SessionState {
        SessionState {
            id,
            data: Mutex::new(data),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, SessionData> {
        // A panic while holding the lock cannot leave h half-written (it is
        // replaced whole), so a poisoned lock's data is still consistent.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}
