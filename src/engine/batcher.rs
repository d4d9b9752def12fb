//! One compute worker per served model version. It owns a thread (compute
//! never runs on the async runtime), takes step requests from a bounded
//! queue, and runs whatever is waiting — up to `max_batch` sessions — as ONE
//! batched forward: gather the sessions' h rows, one [B, I]·[I, 3H] and one
//! [B, H]·[H, 3H] product per layer and step, scatter the new rows back. A
//! lone request is run at once: there is no waiting window. Messages with
//! k > 1 rows join the same batch as a padded variable-length batch.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ids;
use super::replies::ReplyBudget;
use super::rows::{forward_padded, Padded};
use super::spin::Spin;
use super::state::{LastReply, SessionState, StepOutcome};
use super::EngineError;
use crate::model::GruModel;

#[derive(Debug, Clone)]
pub struct StepReply {
    pub outcome: Arc<StepOutcome>,
    /// Answered from the last reply (a retry), nothing was computed.
    pub replayed: bool,
}

/// One step message as it crosses from the service to the worker.
#[derive(Debug, Clone)]
pub struct StepInput {
    /// [rows × cols] row-major; validated against the model before queueing.
    pub inputs: Vec<f32>,
    /// Steps in this message.
    pub rows: usize,
    /// Features per step as the client declared them.
    pub cols: usize,
    /// The step index the client says it starts at (exactly-once retries).
    pub start_step: Option<u64>,
}

pub struct StepJob {
    pub session: Arc<SessionState>,
    pub input: StepInput,
    pub reply: oneshot::Sender<Result<StepReply, EngineError>>,
    pub span: tracing::Span,
}

/// Power-of-two histogram of formed batch sizes: bucket i counts sizes in [2^i, 2^(i+1)).
pub const BATCH_BUCKETS: usize = 16;

#[derive(Default)]
pub struct WorkerStats {
    pub batches: AtomicU64,
    pub session_steps: AtomicU64,
    pub batch_size_hist: [AtomicU64; BATCH_BUCKETS],
    /// Step messages queued and not yet taken into a batch.
    pub queued: AtomicU64,
    /// Live sessions on this model version (a session counts itself in
    /// when opened and out when its last handle drops).
    pub sessions: AtomicU64,
    /// Prometheus handles labelled with this worker's model and version.
    pub metrics: WorkerMetrics,
}

/// The metric handles of one model version, built once when its worker
/// starts: the step path records into them without building label sets.
pub struct WorkerMetrics {
    pub batch_sessions: metrics::Histogram,
    pub step_latency: metrics::Histogram,
    pub steps: metrics::Counter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            batch_sessions: metrics::Histogram::noop(),
            step_latency: metrics::Histogram::noop(),
            steps: metrics::Counter::noop(),
        }
    }
}

impl WorkerMetrics {
    /// `name` is the worker's `model/version`.
    fn labelled(name: &str) -> Self {
        let (model, version) = name.rsplit_once('/').unwrap_or((name, ""));
        let labels = [
            ("model", model.to_string()),
            ("version", version.to_string()),
        ];
        WorkerMetrics {
            batch_sessions: metrics::histogram!("gru_batch_sessions", &labels),
            step_latency: metrics::histogram!("gru_step_latency_seconds", &labels),
            steps: metrics::counter!("gru_steps_total", &labels),
        }
    }
}

impl WorkerStats {
    fn record(&self, size: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.session_steps.fetch_add(size as u64, Ordering::Relaxed);
        let b = (usize::BITS - 1 - size.max(1).leading_zeros()) as usize;
        self.batch_size_hist[b.min(BATCH_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.metrics.batch_sessions.record(size as f64);
    }
}

pub struct Worker {
    name: String,
    tx: Mutex<Option<SyncSender<StepJob>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub stats: Arc<WorkerStats>,
    capacity: usize,
}

impl Worker {
    pub fn start(
        name: String,
        model: Arc<GruModel>,
        max_batch: usize,
        spin: Duration,
        capacity: usize,
        replies: Arc<ReplyBudget>,
    ) -> Result<Worker, EngineError> {
        let (tx, rx) = sync_channel(capacity);
        let stats = Arc::new(WorkerStats {
            metrics: WorkerMetrics::labelled(&name),
            ..WorkerStats::default()
        });
        let st = stats.clone();
        let n = name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("gru-worker {name}"))
            .spawn(move || {
                let ctx = Ctx {
                    name: &n,
                    model: &model,
                    stats: &st,
                    replies: &replies,
                };
                run(ctx, rx, max_batch.max(1), spin)
            })
            .map_err(|e| EngineError::Internal(format!("spawn worker: {e}")))?;
        Ok(Worker {
            name,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            stats,
            capacity,
        })
    }

    /// Queues a job; a full queue is RESOURCE_EXHAUSTED, never a wait.
    pub fn submit(&self, job: StepJob) -> Result<(), EngineError> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else {
            return Err(EngineError::ShuttingDown);
        };
        // Counted before the send, so the worker's decrement never comes first.
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        tx.try_send(job).map_err(|e| {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => EngineError::QueueFull {
                    model: self.name.clone(),
                    capacity: self.capacity,
                },
                TrySendError::Disconnected(_) => EngineError::WorkerStopped {
                    model: self.name.clone(),
                },
            }
        })
    }

    /// Closes the queue and joins the thread (queued jobs are still answered).
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// A step message's fingerprint, kept with its reply so a retry is known
/// as the same message. The floats go through as one byte slice: hashing
/// them one `write_u32` at a time cost ~10 µs per k = 32 message.
pub fn digest(inputs: &[f32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    inputs.len().hash(&mut h);
    let mut block = [0u8; 256];
    for chunk in inputs.chunks(block.len() / 4) {
        for (d, v) in block.chunks_exact_mut(4).zip(chunk) {
            d.copy_from_slice(&v.to_bits().to_le_bytes());
        }
        h.write(&block[..chunk.len() * 4]);
    }
    h.finish()
}

/// What a worker thread works with besides its queue.
struct Ctx<'a> {
    name: &'a str,
    model: &'a GruModel,
    stats: &'a WorkerStats,
    replies: &'a Arc<ReplyBudget>,
}

/// The worker's buffers, kept from batch to batch so that forming a batch
/// allocates nothing per message.
#[derive(Default)]
struct Scratch {
    pending: VecDeque<StepJob>,
    rest: VecDeque<StepJob>,
    batch: Vec<StepJob>,
    seen: HashSet<*const SessionState>,
    live: Vec<Live>,
    lengths: Vec<usize>,
}

fn run(ctx: Ctx<'_>, rx: Receiver<StepJob>, max_batch: usize, spin: Duration) {
    let Ctx { model, stats, .. } = ctx;
    let padded_budget = super::rows::padded_steps_budget(model.config());
    let mut sc = Scratch::default();
    let mut spin = Spin::new(spin);
    loop {
        if sc.pending.is_empty() {
            let idle_from = Instant::now();
            if !spin.wait(&rx, &mut sc.pending, idle_from) {
                match rx.recv() {
                    Ok(j) => sc.pending.push_back(j),
                    Err(_) => return,
                }
                spin.slept(idle_from);
            }
        }
        while sc.pending.len() < max_batch * 2 {
            match rx.try_recv() {
                Ok(j) => sc.pending.push_back(j),
                Err(_) => break,
            }
        }
        // One batch: at most one job per session (a session's later job must
        // see the earlier one's state), keeping each session's order.
        // Rows are padded to the batch's longest message: a batch stops
        // growing when its padded size would pass the budget, so one long
        // message cannot make every short one cost its length.
        sc.seen.clear();
        let mut kmax = 0;
        while let Some(j) = sc.pending.pop_front() {
            let k = kmax.max(j.input.rows);
            let fits = sc.batch.is_empty() || (sc.batch.len() + 1) * k <= padded_budget;
            if sc.batch.len() < max_batch && fits && sc.seen.insert(Arc::as_ptr(&j.session)) {
                kmax = k;
                sc.batch.push(j);
            } else {
                sc.seen.insert(Arc::as_ptr(&j.session));
                sc.rest.push_back(j);
            }
        }
        std::mem::swap(&mut sc.pending, &mut sc.rest);
        stats
            .queued
            .fetch_sub(sc.batch.len() as u64, Ordering::Relaxed);
        spin.last_batch = sc.batch.len();
        run_batch(&ctx, &mut sc);
    }
}

struct Live {
    job: StepJob,
    start: u64,
    digest: u64,
}

/// Checks a job against its session (closed, a retry, the index limit)
/// and answers it if it is not to be computed; else copies its h into
/// `hs` (row-major, [layers × hidden] per job) under the same lock.
fn admit(job: StepJob, hs: &mut Vec<f32>, replayed_rows: &mut u64) -> Option<Live> {
    if job.reply.is_closed() {
        return None; // the client has gone
    }
    let d = job.session.lock();
    if d.closed {
        drop(d);
        let id = job.session.id.clone();
        let _ = job.reply.send(Err(EngineError::SessionNotFound(id)));
        return None;
    }
    let dg = digest(&job.input.inputs);
    if d.unconfirmed && job.input.start_step.is_none() {
        let at = d.step_index;
        drop(d);
        let _ = job.reply.send(Err(EngineError::StepIndexUnconfirmed {
            session: job.session.id.clone(),
            at,
        }));
        return None;
    }
    if let Some(s) = job.input.start_step {
        if s != d.step_index {
            let replay = d
                .last
                .as_ref()
                .filter(|l| l.start_step == s && l.digest == dg)
                .map(|l| l.kept.as_ref().map(|(o, _)| o.clone()));
            let msg = match replay {
                Some(Some(outcome)) => {
                    *replayed_rows += job.input.rows as u64;
                    Ok(StepReply {
                        outcome,
                        replayed: true,
                    })
                }
                Some(None) => Err(EngineError::AlreadyAppliedReplyNotKept {
                    session: job.session.id.clone(),
                    start_step: s,
                    at: d.step_index,
                }),
                None => Err(EngineError::StepIndexMismatch {
                    session: job.session.id.clone(),
                    expected: d.step_index,
                    got: s,
                    last_start: d.last.as_ref().map(|l| l.start_step),
                }),
            };
            drop(d);
            let _ = job.reply.send(msg);
            return None;
        }
    }
    let start = d.step_index;
    if start > ids::MAX_STEP_INDEX - job.input.rows as u64 {
        drop(d);
        let _ = job.reply.send(Err(EngineError::StepIndexOverflow {
            session: job.session.id.clone(),
            at: start,
            steps: job.input.rows as u64,
            max: ids::MAX_STEP_INDEX,
        }));
        return None;
    }
    hs.extend_from_slice(&d.h);
    drop(d);
    Some(Live {
        job,
        start,
        digest: dg,
    })
}

fn run_batch(ctx: &Ctx<'_>, sc: &mut Scratch) {
    let Ctx {
        name, model, stats, ..
    } = *ctx;
    let c = model.config();
    let size = c.num_layers * c.hidden_size;
    // h of every computed job, gathered under its session's lock straight
    // into what becomes the model's state input.
    let mut hs = Vec::with_capacity(sc.batch.len() * size);
    sc.live.clear();
    let mut replayed_rows = 0;
    for job in sc.batch.drain(..) {
        if let Some(l) = admit(job, &mut hs, &mut replayed_rows) {
            sc.live.push(l);
        }
    }
    if replayed_rows > 0 {
        stats.metrics.steps.increment(replayed_rows);
    }
    if sc.live.is_empty() {
        return;
    }
    stats.record(sc.live.len());
    // A panic in the model code fails this batch, not the worker: every
    // other session of this model keeps being served. Nothing of the batch
    // was applied (states are written back only after compute returns).
    let (live, lengths) = (&sc.live, &mut sc.lengths);
    let computed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        inject_panic(name);
        compute(model, live, hs, lengths)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(model = %name, sessions = sc.live.len(), panic = %what, "the compute worker panicked; failing this batch and going on");
        metrics::counter!("gru_worker_panics_total").increment(1);
        Err(EngineError::WorkerPanicked {
            model: name.to_string(),
        })
    });
    match computed {
        Ok(p) => scatter(ctx, &mut sc.live, &p),
        Err(EngineError::WorkerPanicked { .. }) => {
            for l in sc.live.drain(..) {
                let _ = l.job.reply.send(Err(EngineError::WorkerPanicked {
                    model: name.to_string(),
                }));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "batched step failed");
            for l in sc.live.drain(..) {
                let _ = l
                    .job
                    .reply
                    .send(Err(EngineError::Internal(format!("step failed: {e}"))));
            }
        }
    }
}

/// Writes each computed job's new h and step index into its session, keeps
/// its reply for retries and answers it. Rows are copied from the batch's
/// outputs straight into the outcome; h is overwritten in place.
fn scatter(ctx: &Ctx<'_>, live: &mut Vec<Live>, p: &Padded) {
    let c = ctx.model.config();
    let (h, l_n, o) = (c.hidden_size, c.num_layers, c.output_dim());
    let b = live.len();
    for (r, l) in live.drain(..).enumerate() {
        let _enter = l.job.span.enter();
        let k = l.job.input.rows;
        let mut d = l.job.session.lock();
        if d.closed {
            drop(d);
            let id = l.job.session.id.clone();
            let _ = l.job.reply.send(Err(EngineError::SessionNotFound(id)));
            continue;
        }
        let y0 = r * p.kmax * o;
        let next = l.start + k as u64;
        // The old reply's charge goes back before the new one is taken.
        let old = d
            .last
            .take()
            .and_then(|last| last.kept)
            .map(|(o, _charge)| o);
        let outcome = fill_outcome(old, |out| {
            out.outputs.extend_from_slice(&p.ys[y0..y0 + k * o]);
            for layer in 0..l_n {
                out.state
                    .extend_from_slice(&p.hn[(layer * b + r) * h..(layer * b + r + 1) * h]);
            }
            out.start_step = l.start;
            out.next_step = next;
        });
        d.h.copy_from_slice(&outcome.state);
        d.step_index = next;
        d.unconfirmed = false;
        let bytes = 4 * (outcome.outputs.len() + outcome.state.len()) as u64;
        d.last = Some(LastReply {
            start_step: l.start,
            digest: l.digest,
            kept: ctx.replies.charge(bytes).map(|c| (outcome.clone(), c)),
        });
        drop(d);
        // Counted before the reply goes: a client that has its reply finds
        // its steps in the metrics.
        ctx.stats.metrics.steps.increment(k as u64);
        let _ = l.job.reply.send(Ok(StepReply {
            outcome,
            replayed: false,
        }));
    }
}

/// A step's outcome, written by `fill` into the session's previous one
/// when nothing else holds it any more (its reply went out long before the
/// session's next step, so in a steady stream it is always free): no
/// allocation or free per step on the worker. Otherwise a new one.
fn fill_outcome(
    old: Option<Arc<StepOutcome>>,
    fill: impl FnOnce(&mut StepOutcome),
) -> Arc<StepOutcome> {
    if let Some(mut shared) = old {
        if let Some(o) = Arc::get_mut(&mut shared) {
            o.outputs.clear();
            o.state.clear();
            fill(o);
            return shared;
        }
    }
    let mut o = StepOutcome::default();
    fill(&mut o);
    Arc::new(o)
}

/// Test hook (debug builds only): models whose next batch panics inside
/// compute, as a bug in the model code would.
#[cfg(debug_assertions)]
#[doc(hidden)]
pub static PANIC_NEXT_BATCH: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn inject_panic(_name: &str) {
    #[cfg(debug_assertions)]
    {
        let mut names = PANIC_NEXT_BATCH.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = names.iter().position(|n| n == _name) {
            names.remove(p);
            drop(names);
            panic!("injected panic in the compute of '{_name}'");
        }
    }
}

/// Pads the jobs' inputs into one [B × kmax × I] block (h is gathered
/// already) and runs one forward.
fn compute(
    model: &GruModel,
    live: &[Live],
    hs: Vec<f32>,
    lengths: &mut Vec<usize>,
) -> Result<Padded, EngineError> {
    let c = model.config();
    let (i, h, l_n) = (c.input_size, c.hidden_size, c.num_layers);
    let b = live.len();
    lengths.clear();
    lengths.extend(live.iter().map(|l| l.job.input.rows));
    let kmax = lengths.iter().copied().max().unwrap_or(1);
    let mut xs = vec![0f32; b * kmax * i];
    for (r, l) in live.iter().enumerate() {
        let x = &l.job.input.inputs;
        xs[r * kmax * i..r * kmax * i + x.len()].copy_from_slice(x);
    }
    // `hs` is [B × layers × H]; the model takes [layers × B × H].
    let state = if l_n == 1 {
        hs
    } else {
        let mut st = vec![0f32; l_n * b * h];
        for r in 0..b {
            for layer in 0..l_n {
                st[(layer * b + r) * h..(layer * b + r + 1) * h]
                    .copy_from_slice(&hs[(r * l_n + layer) * h..(r * l_n + layer + 1) * h]);
            }
        }
        st
    };
    forward_padded(model, xs, state, lengths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(out: &mut StepOutcome, v: f32) {
        out.outputs.extend_from_slice(&[v; 3]);
        out.state.extend_from_slice(&[v; 2]);
        out.start_step = v as u64;
        out.next_step = v as u64 + 1;
    }

    #[test]
    fn an_outcome_is_rewritten_in_place_only_when_nothing_else_holds_it() {
        let first = fill_outcome(None, |o| step(o, 1.0));
        let at = Arc::as_ptr(&first);
        // Alone: the same allocation, its old values gone.
        let second = fill_outcome(Some(first), |o| step(o, 2.0));
        assert_eq!(Arc::as_ptr(&second), at);
        assert_eq!(second.outputs, [2.0; 3]);
        assert_eq!(second.state, [2.0; 2]);
        assert_eq!((second.start_step, second.next_step), (2, 3));
        // A reply still out (or a replay) holds it: a new outcome, and the
        // held one keeps its values.
        let held = second.clone();
        let third = fill_outcome(Some(second), |o| step(o, 3.0));
        assert_ne!(Arc::as_ptr(&third), Arc::as_ptr(&held));
        assert_eq!(held.outputs, [2.0; 3]);
        assert_eq!(third.outputs, [3.0; 3]);
        assert_eq!(third.state, [3.0; 2]);
    }
}
