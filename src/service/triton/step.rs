//! A sequence's step request: checked against the model, then queued on
//! the sequence's session, which is at hand (held here), opened (START) or
//! found through the session store.

use std::sync::Arc;

use super::error::TritonError;
use super::model::{INPUT, SEQUENCE_LENGTH, STATE_IN};
use super::request::{shape_error, start_required, Inputs, SeqParams};
use super::sequences::{Found, SeqKey};
use super::Triton;
use crate::engine::{
    EngineError, HiddenState, PendingStep, PredictSeq, ServedModel, Session, StepInput,
};
use crate::service::observe;

/// The queued work of one request: a sequence's step (queued here) or a
/// stateless forward (`infer.rs`).
pub(super) enum Work {
    Step {
        pending: PendingStep,
        k: usize,
        key: SeqKey,
        end: bool,
    },
    Predict {
        seqs: Vec<PredictSeq>,
        lens: Vec<usize>,
        t: usize,
    },
}

/// A sequence request, checked against the model.
pub(super) struct StepPlan {
    pub(super) key: SeqKey,
    /// The version the request names, if any.
    pub(super) explicit: Option<u64>,
    pub(super) input: StepInput,
    pub(super) initial: Option<HiddenState>,
    pub(super) k: usize,
    pub(super) start: bool,
    pub(super) end: bool,
}

impl Triton {
    /// A sequence request checked against the model: one `[1, k, I]`
    /// INPUT, and STATE_IN only with START.
    pub(super) fn step_plan(
        &self,
        m: &ServedModel,
        key: SeqKey,
        explicit: Option<u64>,
        p: &SeqParams,
        inputs: Inputs,
    ) -> Result<StepPlan, TritonError> {
        let c = m.model.config();
        let (i, l, h) = (c.input_size, c.num_layers, c.hidden_size);
        let (shape, values) = inputs.input;
        if shape.len() == 3 && shape[0] != 1 {
            return Err(TritonError::invalid(format!(
                "inference request to model '{}' must specify batch-size 1 due to requirements of sequence batcher",
                m.name
            )));
        }
        if !(shape.len() == 3 && shape[1] >= 1 && shape[2] == i as i64) {
            return Err(shape_error(INPUT, &m.name, &[1, -1, i as i64], &shape));
        }
        if inputs.lengths.is_some() {
            return Err(TritonError::invalid(format!(
                "input '{SEQUENCE_LENGTH}' is for stateless requests; a sequence request carries its k rows in '{INPUT}' [1, k, {i}]"
            )));
        }
        let initial = match inputs.state {
            Some(_) if !p.start => {
                return Err(TritonError::invalid(format!(
                    "input '{STATE_IN}' seeds a sequence: send it with sequence_start"
                )))
            }
            Some((ss, v)) => {
                let want = [1, l as i64, h as i64];
                if ss != want && ss != want[1..] {
                    return Err(shape_error(STATE_IN, &m.name, &want, &ss));
                }
                Some(HiddenState {
                    layers: l,
                    hidden: h,
                    values: v,
                })
            }
            None => None,
        };
        let k = shape[1] as usize;
        Ok(StepPlan {
            key,
            explicit,
            input: StepInput {
                inputs: values,
                rows: k,
                cols: i,
                start_step: p.step,
            },
            initial,
            k,
            start: p.start,
            end: p.end,
        })
    }

    /// A START's session opened (ending a live one of the same id), or a
    /// sequence not held here found through the store; then its step queued.
    pub(super) async fn step_wait(
        &self,
        m: &Arc<ServedModel>,
        owner: Option<&str>,
        mut step: StepPlan,
    ) -> Result<Work, TritonError> {
        let engine = self.engine()?;
        let skey = step.key.session_key();
        if step.start {
            // Triton's START ends a live sequence of the same id and begins
            // it anew. An unreachable shared store is no reason to refuse.
            if let Ok(Some(old)) = engine.session_for_key(owner, &skey).await {
                let _ = engine.close_session(&old.id, owner).await;
            }
            let owned = owner.map(str::to_string);
            let initial = step.initial.take();
            let (session, _) = engine
                .open_session(&m.name, Some(m.version), Some(skey), owned, initial, None)
                .await?;
            observe::record_session_opened(&m.name, m.version);
            observe::note_session(&session.id);
            let pending = match engine.submit_step(&session.id, owner, step.input) {
                Ok(p) => p,
                Err(e) => {
                    // The first step was refused: the sequence did not start.
                    let _ = engine.close_session(&session.id, owner).await;
                    return Err(e.into());
                }
            };
            self.sequences.start(step.key.clone(), &session);
            return Ok(Work::Step {
                pending,
                k: step.k,
                key: step.key,
                end: step.end,
            });
        }
        // Not held here: restored by the store after a restart, or held by
        // another replica (taken over), or truly gone.
        let session = match engine.session_for_key(owner, &skey).await? {
            Some(s) => {
                self.sequences.start(step.key.clone(), &s);
                s
            }
            None => {
                // Looked up again: the table remembers an expired id.
                let expired = matches!(self.sequences.find(&step.key), Found::Expired);
                let ttl = expired.then(|| engine.session_ttl());
                return Err(start_required(&step.key.id, &m.name, ttl));
            }
        };
        self.held_step(m, owner, session, step)
    }

    /// The step of a sequence whose session is at hand, queued.
    pub(super) fn held_step(
        &self,
        m: &ServedModel,
        owner: Option<&str>,
        session: Arc<Session>,
        step: StepPlan,
    ) -> Result<Work, TritonError> {
        let engine = self.engine()?;
        let StepPlan {
            key,
            explicit,
            input,
            k,
            end,
            ..
        } = step;
        if explicit.is_some_and(|v| v != session.model.version) {
            return Err(TritonError::invalid(format!(
                "sequence {} runs on version {} of model '{}'; this request names version {}",
                key.id,
                session.model.version,
                m.name,
                explicit.unwrap_or(0)
            )));
        }
        observe::note_session(&session.id);
        let pending = match engine.submit_held_step(&session, owner, input) {
            Ok(p) => p,
            Err(EngineError::SessionExpired { .. }) => {
                self.sequences.expired(&key, &session.id);
                return Err(start_required(&key.id, &m.name, Some(engine.session_ttl())));
            }
            Err(EngineError::SessionNotFound(_)) => {
                self.sequences.end(&key, &session.id);
                return Err(start_required(&key.id, &m.name, None));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Work::Step {
            pending,
            k,
            key,
            end,
        })
    }
}
