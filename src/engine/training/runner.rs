//! The queue's consumers: runner threads that take jobs in order, train
//! each inside their own rayon pool at lower OS priority (so training never
//! competes for the serving workers' threads), record progress for
//! watchers, publish the result through the registry, and end the job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::TrainingError;
use super::{lock, now_ms, Job, JobResult, JobState, Training};
use crate::engine::registry::NewVersion;
use crate::model::train::{train, Progress, Sequence, TrainOutcome};
use crate::model::{ModelConfig, ModelError};

/// Batch events are recorded at most this often (epoch ends always are), so
/// a long job's replay history stays small.
const RECORD_EVERY: Duration = Duration::from_millis(200);
/// Recorded events per job at most; past it only epoch ends are recorded.
const MAX_EVENTS: usize = 20_000;

impl Training {
    /// Ends a job: its final state, the metric, the record, the watchers.
    pub(super) fn finish(
        &self,
        job: &Job,
        state: JobState,
        error: String,
        result: Option<JobResult>,
    ) {
        let status = {
            let mut s = lock(&job.status);
            s.state = state;
            s.error = error;
            s.result = result;
            s.finished_unix_ms = now_ms();
            // An ended job holds no lease.
            s.heartbeat_unix_ms = 0;
            s.clone()
        };
        *lock(&job.input) = None;
        let outcome = match state {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            _ => "interrupted",
        };
        metrics::counter!("gru_training_jobs_finished_total", "outcome" => outcome).increment(1);
        self.persist(&status);
        let _ = std::fs::remove_file(self.cancel_path(&status.job_id));
        job.notify();
        // The state by name, and no `error` field on a success.
        let error = (!status.error.is_empty()).then_some(status.error.as_str());
        tracing::info!(job = %status.job_id, state = outcome, error, "training job ended");
        self.prune_records();
    }

    fn stopping(&self) -> bool {
        lock(&self.queue).stopping
    }

    pub(super) fn runner(self: Arc<Self>) {
        set_nice(self.config.nice);
        let nice = self.config.nice;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.config.threads_per_job.max(1))
            .thread_name(|n| format!("train-compute-{n}"))
            .start_handler(move |_| set_nice(nice))
            .build();
        let pool = match pool {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "could not start a training thread pool; training is off");
                return;
            }
        };
        loop {
            let job = {
                let mut queue = lock(&self.queue);
                loop {
                    if queue.stopping {
                        return;
                    }
                    if let Some(j) = queue.waiting.pop_front() {
                        break j;
                    }
                    queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
            };
            // Positions of the jobs still waiting changed.
            for j in lock(&self.queue).waiting.iter() {
                j.notify();
            }
            pool.install(|| self.run_job(&job));
        }
    }

    fn run_job(&self, job: &Arc<Job>) {
        let Some(input) = lock(&job.input).take() else {
            return;
        };
        let (id, model_name, hyper) = {
            let mut s = lock(&job.status);
            s.state = JobState::Running;
            s.started_unix_ms = now_ms();
            s.heartbeat_unix_ms = s.started_unix_ms;
            self.persist(&s);
            (s.job_id.clone(), s.model.clone(), s.hyperparameters.clone())
        };
        job.notify();
        tracing::info!(job = %id, model = %model_name, "training job started");
        let mut last_record: Option<Instant> = None;
        let mut on_progress = |p: &Progress| {
            let now = Instant::now();
            let mut events = lock(&job.events);
            let record = p.epoch_done
                || (events.len() < MAX_EVENTS
                    && last_record.is_none_or(|t| now - t >= RECORD_EVERY));
            if record {
                events.push(p.clone());
                last_record = Some(now);
            }
            drop(events);
            let mut s = lock(&job.status);
            s.progress = Some(p.clone());
            if p.epoch_done {
                // Other replicas' watchers read progress from the record:
                // every epoch end, and every heartbeat between them.
                s.heartbeat_unix_ms = now_ms();
                self.persist(&s);
            }
            drop(s);
            if !p.epoch_done {
                metrics::counter!("gru_training_batches_total").increment(1);
            }
            job.notify();
        };
        let outcome = train(
            &input.base,
            &input.data,
            &hyper,
            &job.cancel,
            &mut on_progress,
        );
        drop(input.data);
        match outcome {
            Ok(out) => match self.publish(&id, &model_name, &out, &input.description) {
                Ok(result) => {
                    self.finish(job, JobState::Succeeded, String::new(), Some(result));
                }
                Err(e) => self.finish(job, JobState::Failed, e.to_string(), None),
            },
            Err(ModelError::Cancelled) if self.stopping() => self.finish(
                job,
                JobState::Interrupted,
                "the server stopped while the job was running".into(),
                None,
            ),
            Err(ModelError::Cancelled) => self.finish(
                job,
                JobState::Cancelled,
                "cancelled while running; nothing was published".into(),
                None,
            ),
            Err(e) => self.finish(job, JobState::Failed, e.to_string(), None),
        }
    }

    /// Publishes a job's model as the next version of `name` and starts
    /// serving it. The version carries the job's id and result, so a stop
    /// between the publication and the job record's update is reconciled at
    /// start (see `records.rs`).
    fn publish(
        &self,
        job_id: &str,
        name: &str,
        out: &TrainOutcome,
        description: &str,
    ) -> Result<JobResult, TrainingError> {
        let result = |version| JobResult {
            model: name.to_string(),
            version,
            epochs_run: out.epochs_run,
            final_train_loss: out.final_train_loss,
            best_validation_loss: out.best_val_loss,
            stopped_early: out.stopped_early,
        };
        let new = NewVersion {
            model: &out.model,
            description,
            tag: job_id,
            fault: self.config.fault,
        };
        let version = self
            .registry
            .publish(name, new, |version| {
                serde_json::json!({
                    "job_id": job_id,
                    "trained_unix_ms": now_ms(),
                    "result": result(version),
                })
            })
            .map_err(TrainingError::PublishFailed)?;
        tracing::info!(job = %job_id, model = %name, version, "published a trained model version");
        Ok(result(version))
    }
}

/// Worst-case memory of one mini-batch: `batch_size` rows padded to the
/// longest sequence, each padded step holding its input, target and output
/// rows and, per layer, the BPTT cache and gradients (about 12 H).
pub(super) fn batch_bytes(c: &ModelConfig, data: &[Sequence], batch_size: usize) -> u64 {
    let longest = data.iter().map(|s| s.len(c.input_size)).max().unwrap_or(0) as u64;
    let rows = batch_size.min(data.len()) as u64;
    let per_step =
        4 * (c.input_size + 2 * c.output_dim() + c.num_layers * 12 * c.hidden_size) as u64;
    rows.saturating_mul(longest).saturating_mul(per_step)
}

/// Lowers this thread's scheduling priority (Linux: niceness is per thread).
fn set_nice(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice != 0 {
        // SAFETY: plain syscalls on the calling thread.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}
