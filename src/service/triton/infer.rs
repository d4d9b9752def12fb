//! ModelInfer, for both transports: parameters and tensors checked against
//! the model, then either a stateless forward (no `sequence_id`) or one step
//! message of a sequence's session.
//!
//! Two phases, like gru.v1's steps: [`Triton::submit`] queues the work on
//! the model's worker and returns (its only waits are for the session store,
//! to find a sequence this process does not hold), so a stream that awaits
//! each submit in turn applies one sequence's requests in arrival order
//! (a stream calls [`Triton::submit_now`], which queues a held sequence's
//! step without waiting, and [`Triton::submit_wait`] only when it must);
//! [`Triton::finish`] awaits the reply, closes the session on END and builds
//! the response.
//!
//! A sequence's session is opened with a key derived from (model, id), so
//! the session store keeps it like any other: it survives a restart (file
//! store) and moves between replicas (Redis), and the request that finds it
//! gone from this process finds it by that key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::error::TritonError;
use super::model::{INPUT, OUTPUT, SEQUENCE_LENGTH, STATE_IN, STATE_OUT};
use super::request::{collect_inputs, seq_params, shape_error, wanted, Inputs};
pub use super::request::{InferRequest, InferResponse, Params};
use super::sequences::{Found, SeqKey};
use super::stats::Timings;
use super::step::{StepPlan, Work};
use super::tensor::{Floats, OutTensor};
use super::tensor::{InTensor, Name};
use super::Triton;
use crate::engine::{HiddenState, PredictSeq, ServedModel};
use crate::service::observe;

/// What a response echoes of its request: the model and version as asked,
/// and the request id. Moved from the request, never copied: a refusal
/// hands it back for the stream's in-band error.
#[derive(Debug, Default)]
pub struct Echo {
    pub model: String,
    pub version: String,
    pub id: String,
}

/// A refused request and its echo.
#[derive(Debug)]
pub struct Refused {
    pub error: TritonError,
    pub echo: Echo,
}

impl From<Refused> for TritonError {
    fn from(r: Refused) -> Self {
        r.error
    }
}

/// A request queued by [`Triton::submit`], for [`Triton::finish`].
pub struct Submitted {
    echo: Echo,
    model: Arc<ServedModel>,
    owner: Option<String>,
    wanted: [bool; 2],
    started: Instant,
    input_time: Duration,
    work: Work,
    span: tracing::Span,
}

impl Submitted {
    fn new(
        echo: Echo,
        m: &Arc<ServedModel>,
        owner: Option<&str>,
        wanted: [bool; 2],
        started: Instant,
        work: Work,
        span: tracing::Span,
    ) -> Self {
        // A step is served by its session's version, which a request
        // naming no version did not choose.
        let model = match &work {
            Work::Step { pending, .. } => pending.session.model.clone(),
            Work::Predict { .. } => m.clone(),
        };
        Submitted {
            echo,
            model,
            owner: owner.map(str::to_string),
            wanted,
            started,
            input_time: started.elapsed(),
            work,
            span,
        }
    }
}

/// [`Triton::submit_now`]'s answer: done, or waiting for the session store.
// Done is nearly every request's answer: boxing it would allocate per request.
#[allow(clippy::large_enum_variant)]
pub enum Submit {
    Done(Result<Submitted, Refused>),
    /// START, or a sequence this process does not hold: its session is
    /// opened or found by [`Triton::submit_wait`].
    Wait(Box<Waiting>),
}

/// A checked sequence request whose session is yet to be opened or found.
pub struct Waiting {
    echo: Echo,
    model: Arc<ServedModel>,
    owner: Option<String>,
    wanted: [bool; 2],
    started: Instant,
    span: tracing::Span,
    step: StepPlan,
}

/// What the synchronous phase decided.
enum Planned {
    Ready(Work),
    Wait(StepPlan),
}

impl Triton {
    /// Phase 1: validates `req` and queues its work. A caller that awaits
    /// each submit before the next makes its order the order a sequence's
    /// requests are applied in.
    pub async fn submit(
        &self,
        owner: Option<&str>,
        req: InferRequest,
    ) -> Result<Submitted, Refused> {
        match self.submit_now(owner, req) {
            Submit::Done(r) => r,
            Submit::Wait(w) => self.submit_wait(*w).await,
        }
    }

    /// Phase 1 without waiting: a stateless request or a step of a sequence
    /// held here (nearly every request of a stream) is queued now; START
    /// and a sequence not held here wait for the store. A stream calls this
    /// first so that its common case builds no future for the rare one
    /// (moving that future was ~6 % of the stream's server CPU: perf,
    /// BENCHMARKS.md).
    pub fn submit_now(&self, owner: Option<&str>, req: InferRequest) -> Submit {
        let started = Instant::now();
        let InferRequest {
            model,
            version,
            id,
            params,
            inputs,
            outputs,
        } = req;
        let echo = Echo { model, version, id };
        let m = match self.model(&echo.model, &echo.version) {
            Ok(m) => m,
            Err(error) => return Submit::Done(Err(Refused { error, echo })),
        };
        // Debug level, as gru.v1's per-step span: a stream carries thousands
        // of requests a second; the RPC itself has its span at info.
        let span = tracing::debug_span!(
            "triton_infer",
            model = %m.name,
            version = m.version,
            sequence_id = tracing::field::Empty,
            steps = tracing::field::Empty,
        );
        observe::note_model(&m.name, m.version);
        let planned =
            span.in_scope(|| self.plan(&m, owner, &echo.version, (params, inputs, outputs), &span));
        match planned {
            Ok((Planned::Ready(work), wanted)) => Submit::Done(Ok(Submitted::new(
                echo, &m, owner, wanted, started, work, span,
            ))),
            Ok((Planned::Wait(step), wanted)) => Submit::Wait(Box::new(Waiting {
                echo,
                model: m,
                owner: owner.map(str::to_string),
                wanted,
                started,
                span,
                step,
            })),
            Err(error) => {
                self.stats.fail(&m.name, m.version, started.elapsed());
                Submit::Done(Err(Refused { error, echo }))
            }
        }
    }

    /// Phase 1's rest for a [`Submit::Wait`]: opens or finds the sequence's
    /// session, then queues the step.
    pub async fn submit_wait(&self, w: Waiting) -> Result<Submitted, Refused> {
        let Waiting {
            echo,
            model: m,
            owner,
            wanted,
            started,
            span,
            step,
        } = w;
        let r = self
            .step_wait(&m, owner.as_deref(), step)
            .instrument(span.clone())
            .await;
        match r {
            Ok(work) => Ok(Submitted::new(
                echo,
                &m,
                owner.as_deref(),
                wanted,
                started,
                work,
                span,
            )),
            Err(error) => {
                self.stats.fail(&m.name, m.version, started.elapsed());
                Err(Refused { error, echo })
            }
        }
    }

    /// The request checked against the model, and its work queued when no
    /// wait is needed; the outputs it wants.
    fn plan(
        &self,
        m: &Arc<ServedModel>,
        owner: Option<&str>,
        version: &str,
        (params, inputs, outputs): (Params, Vec<InTensor>, Vec<Name>),
        span: &tracing::Span,
    ) -> Result<(Planned, [bool; 2]), TritonError> {
        let mut p = seq_params(&params)?;
        let wanted = wanted(&m.name, &outputs)?;
        let inputs = collect_inputs(&m.name, inputs)?;
        let planned = match p.id.take() {
            None => Planned::Ready(self.predict_work(m, inputs)?),
            Some(id) => {
                span.record("sequence_id", tracing::field::display(&id));
                let key = SeqKey {
                    owner: owner.map(str::to_string),
                    model: m.name.clone(),
                    id,
                };
                let explicit = super::model::parse_version(version)?;
                let step = self.step_plan(m, key, explicit, &p, inputs)?;
                span.record("steps", step.k);
                match step.start {
                    true => Planned::Wait(step),
                    false => match self.sequences.find(&step.key) {
                        Found::Live(s) => Planned::Ready(self.held_step(m, owner, s, step)?),
                        _ => Planned::Wait(step),
                    },
                }
            }
        };
        Ok((planned, wanted))
    }

    fn predict_work(&self, m: &ServedModel, inputs: Inputs) -> Result<Work, TritonError> {
        let c = m.model.config();
        let (shape, values) = inputs.input;
        let (i, l, h) = (c.input_size, c.num_layers, c.hidden_size);
        let ok = shape.len() == 3 && shape[0] >= 1 && shape[1] >= 1 && shape[2] == i as i64;
        if !ok {
            return Err(shape_error(INPUT, &m.name, &[-1, -1, i as i64], &shape));
        }
        let (b, t) = (shape[0] as usize, shape[1] as usize);
        if b > self.settings.max_batch_size {
            return Err(TritonError::invalid(format!(
                "inference request batch-size must be <= {} for '{}'",
                self.settings.max_batch_size, m.name
            )));
        }
        let lens: Vec<usize> = match inputs.lengths {
            None => vec![t; b],
            Some((ls, v)) => {
                if !(ls == [b as i64] || ls == [b as i64, 1]) {
                    return Err(shape_error(SEQUENCE_LENGTH, &m.name, &[b as i64, 1], &ls));
                }
                let mut out = Vec::with_capacity(b);
                for (n, &len) in v.iter().enumerate() {
                    if len < 1 || len > t as i64 {
                        return Err(TritonError::invalid(format!(
                            "{SEQUENCE_LENGTH}[{n}] = {len}: lengths are 1..={t} (the T of INPUT)"
                        )));
                    }
                    out.push(len as usize);
                }
                out
            }
        };
        let states = match inputs.state {
            None => None,
            Some((ss, v)) => {
                if ss != [b as i64, l as i64, h as i64] {
                    return Err(shape_error(
                        STATE_IN,
                        &m.name,
                        &[b as i64, l as i64, h as i64],
                        &ss,
                    ));
                }
                Some(v)
            }
        };
        let seqs = (0..b)
            .map(|n| PredictSeq {
                inputs: values[n * t * i..(n * t + lens[n]) * i].to_vec(),
                len: lens[n],
                initial: states.as_ref().map(|s| HiddenState {
                    layers: l,
                    hidden: h,
                    values: s[n * l * h..(n + 1) * l * h].to_vec(),
                }),
            })
            .collect();
        Ok(Work::Predict { seqs, lens, t })
    }

    /// Phase 2: awaits the work and builds the response.
    pub async fn finish(&self, mut s: Submitted) -> Result<InferResponse, Refused> {
        let (model, started) = (s.model.clone(), s.started);
        let span = s.span.clone();
        let echo = std::mem::take(&mut s.echo);
        match self.finish_inner(s, echo).instrument(span).await {
            Ok(r) => Ok(r),
            Err(refused) => {
                self.stats
                    .fail(&model.name, model.version, started.elapsed());
                Err(refused)
            }
        }
    }

    async fn finish_inner(&self, s: Submitted, echo: Echo) -> Result<InferResponse, Refused> {
        let m = s.model.clone();
        let (tensors, batch, replied) = match self.await_work(&m, s.work, s.started, &s.owner).await
        {
            Ok(r) => r,
            Err(error) => return Err(Refused { error, echo }),
        };
        let outputs = tensors
            .into_iter()
            .zip(s.wanted)
            .filter_map(|(t, w)| w.then_some(t))
            .collect();
        let response = InferResponse {
            // The served name; the request's string is reused when equal.
            model: if echo.model == m.name {
                echo.model
            } else {
                m.name.clone()
            },
            version: m.version,
            id: echo.id,
            outputs,
        };
        self.stats.success(
            &m.name,
            m.version,
            Timings {
                input: s.input_time,
                // From queued to answered: the engine's queue is its time.
                infer: replied.saturating_duration_since(s.started + s.input_time),
                output: replied.elapsed(),
                batch,
            },
        );
        Ok(response)
    }

    /// The engine's answer as the two output tensors (OUTPUT, STATE_OUT),
    /// the inferences it carried and when it came (one clock read serves
    /// the latency metric and the statistics).
    async fn await_work(
        &self,
        m: &ServedModel,
        work: Work,
        started: Instant,
        owner: &Option<String>,
    ) -> Result<([OutTensor; 2], u64, Instant), TritonError> {
        let engine = self.engine()?;
        let c = m.model.config();
        let (o, l, h) = (c.output_dim(), c.num_layers, c.hidden_size);
        Ok(match work {
            Work::Step {
                pending,
                k,
                key,
                end,
            } => {
                let session = pending.session.clone();
                let reply = pending.wait().await?;
                let replied = Instant::now();
                // `gru_steps_total` is the worker's (it counts each step
                // before its reply, for either protocol).
                m.worker
                    .stats
                    .metrics
                    .step_latency
                    .record((replied - started).as_secs_f64());
                if end {
                    self.sequences.end(&key, &session.id);
                    // Boxed, as the predict below: the rare paths' futures
                    // would otherwise size the one every reply awaits.
                    let _ = Box::pin(engine.close_session(&session.id, owner.as_deref())).await;
                }
                // Read in place by the encoders: no copy of the outcome.
                let out = reply.outcome;
                (
                    [
                        OutTensor {
                            name: OUTPUT,
                            shape: [1, k as i64, o as i64],
                            data: Floats::Outputs(out.clone()),
                        },
                        OutTensor {
                            name: STATE_OUT,
                            shape: [1, l as i64, h as i64],
                            data: Floats::State(out),
                        },
                    ],
                    1,
                    replied,
                )
            }
            Work::Predict { seqs, lens, t } => {
                let b = seqs.len();
                let out = Box::pin(engine.predict(&m.name, Some(m.version), seqs)).await?;
                let replied = Instant::now();
                observe::record_predict(&m.name, m.version, b, replied - started);
                // Padded to T: rows past a sequence's length are zeros.
                let mut y = vec![0f32; b * t * o];
                for (n, (ys, len)) in out.outputs.iter().zip(&lens).enumerate() {
                    y[n * t * o..(n * t + len) * o].copy_from_slice(ys);
                }
                (
                    [
                        OutTensor {
                            name: OUTPUT,
                            shape: [b as i64, t as i64, o as i64],
                            data: Floats::Owned(y),
                        },
                        OutTensor {
                            name: STATE_OUT,
                            shape: [b as i64, l as i64, h as i64],
                            data: Floats::Owned(out.states.concat()),
                        },
                    ],
                    b as u64,
                    replied,
                )
            }
        })
    }
}
