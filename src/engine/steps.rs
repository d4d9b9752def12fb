//! Step messages: queued on the session's model worker without waiting
//! (so messages submitted one after another are applied in that order),
//! answered on a oneshot the worker completes. A stream resolves each of
//! its sessions once ([`StreamSessions`]).

use std::sync::Arc;

use super::batcher::{self, StepInput, StepReply};
use super::{check_finite, Engine, EngineError, Session};

/// Most sessions one stream remembers (see [`Engine::submit_stream_step`]);
/// past it the memory starts over, so a stream cannot grow it.
pub const STREAM_SESSIONS_MAX: usize = 1024;

/// The sessions a stream has used, by id. Weak: a stream does not keep a
/// closed or expired session alive.
#[derive(Default)]
pub struct StreamSessions {
    map: std::collections::HashMap<String, std::sync::Weak<Session>, IdHash>,
}

/// Hashes session ids, which the store makes from 128 random bits (only
/// ids the store resolved are ever kept), with a multiply-rotate instead of
/// SipHash: the lookup is on every stream message.
#[derive(Default, Clone, Copy)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A queued step message (see [`Engine::submit_step`]).
pub struct PendingStep {
    pub session: Arc<Session>,
    rx: tokio::sync::oneshot::Receiver<Result<batcher::StepReply, EngineError>>,
}

impl PendingStep {
    /// The worker's reply.
    pub async fn wait(self) -> Result<batcher::StepReply, EngineError> {
        let PendingStep { session, rx } = self;
        rx.await.map_err(|_| EngineError::WorkerDroppedRequest {
            model: session.model.name.clone(),
        })?
    }
}

impl Engine {
    /// Validates a step message and queues it on the session's model
    /// worker, without waiting. Synchronous on purpose: messages submitted
    /// one after another are applied in that order (a stream's messages for
    /// one session must be).
    pub fn submit_step(
        &self,
        session_id: &str,
        owner: Option<&str>,
        input: StepInput,
    ) -> Result<PendingStep, EngineError> {
        let session = self.sessions.get_owned(session_id, owner)?;
        self.queue_step(session, input)
    }

    /// [`Engine::submit_step`] for a stream: a session the stream has used
    /// before is taken from `seen` (no shard lock, no store lookup), with
    /// the same liveness rule as the store's (closed, or idle past the TTL,
    /// goes to the store, which answers as it always does).
    pub fn submit_stream_step(
        &self,
        seen: &mut StreamSessions,
        session_id: &str,
        owner: Option<&str>,
        input: StepInput,
    ) -> Result<PendingStep, EngineError> {
        let cached = seen.map.get(session_id).and_then(std::sync::Weak::upgrade);
        let session = match cached {
            Some(s) if self.still_live(&s) => s,
            _ => {
                seen.map.remove(session_id);
                let s = self.sessions.get_owned(session_id, owner)?;
                if seen.map.len() >= STREAM_SESSIONS_MAX {
                    seen.map.clear();
                }
                seen.map.insert(session_id.to_string(), Arc::downgrade(&s));
                s
            }
        };
        self.queue_step(session, input)
    }

    /// [`Engine::submit_step`] for a session the caller holds (a Triton
    /// sequence's, found by its key): queued without a store lookup while
    /// it is live; otherwise the store answers as it always does.
    pub fn submit_held_step(
        &self,
        session: &Arc<Session>,
        owner: Option<&str>,
        input: StepInput,
    ) -> Result<PendingStep, EngineError> {
        if self.still_live(session) {
            return self.queue_step(session.clone(), input);
        }
        self.submit_step(&session.id, owner, input)
    }

    /// Marks a cached session used now when the store would: not closed
    /// and not idle past the TTL.
    fn still_live(&self, s: &Session) -> bool {
        let now = tokio::time::Instant::now();
        let mut d = s.lock();
        let live = !d.closed && now.saturating_duration_since(d.last_used) <= self.sessions.ttl();
        if live {
            d.last_used = now;
        }
        live
    }

    fn queue_step(
        &self,
        session: Arc<Session>,
        input: StepInput,
    ) -> Result<PendingStep, EngineError> {
        let StepInput {
            ref inputs,
            rows: k,
            cols,
            ..
        } = input;
        let i = session.model.model.config().input_size;
        if k == 0 || k > self.config.max_steps_per_message {
            return Err(EngineError::StepRowCount {
                got: k,
                max: self.config.max_steps_per_message,
            });
        }
        if cols != i || inputs.len() != k * i {
            return Err(EngineError::StepInputShape {
                model: session.model.name.clone(),
                features: i,
                rows: k,
                cols,
                values: inputs.len(),
            });
        }
        check_finite("inputs", inputs)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        session.model.worker.submit(batcher::StepJob {
            session: session.state().clone(),
            input,
            reply: tx,
            span: tracing::Span::current(),
        })?;
        Ok(PendingStep { session, rx })
    }

    /// Feeds a step message to a session and waits for the reply.
    pub async fn step(
        &self,
        session_id: &str,
        owner: Option<&str>,
        input: StepInput,
    ) -> Result<StepReply, EngineError> {
        self.ensure_session(session_id, owner).await?;
        self.submit_step(session_id, owner, input)?.wait().await
    }
}
