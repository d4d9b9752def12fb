//! Durable job records: one JSON file per job in `<model-dir>/.jobs/`,
//! rewritten atomically at each state change and, while the job is queued or
//! running, at every heartbeat of the replica that owns it. Shared by every
//! replica on the model directory: a record whose heartbeat is older than
//! the lease was cut off (its replica stopped or crashed) and is reconciled,
//! at start and at every lease by the heartbeat thread; records are pruned
//! past a limit. `<id>.cancel` asks the owning replica to cancel the job.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;

use super::{lock, now_ms, JobResult, JobState, JobStatus, Training, TrainingError};
use crate::engine::registry::{valid_model_name, PROVENANCE_FILE};
use crate::engine::EngineError;
use crate::formats::files::write_atomic;

pub(super) const JOBS_DIR: &str = ".jobs";

/// Reads one record; None when it is absent, Some(Err) when unreadable.
pub(super) fn read_record_file(path: &Path) -> Option<Result<JobStatus, String>> {
    match std::fs::read(path) {
        Ok(b) => Some(serde_json::from_slice::<JobStatus>(&b).map_err(|e| e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.to_string())),
    }
}

/// True when a queued or running record's owner has not rewritten it
/// within `lease` (records from before heartbeats have none: expired).
pub(super) fn lease_expired(status: &JobStatus, lease: std::time::Duration) -> bool {
    !status.state.is_final() && now_ms() - status.heartbeat_unix_ms > lease.as_millis() as i64
}

impl Training {
    /// Marks the queued or running records of replicas that stopped (their
    /// lease expired) INTERRUPTED, or SUCCEEDED when their version was
    /// published before the stop. A live replica's jobs are left alone.
    pub(super) fn reconcile_records(&self) {
        for status in self.read_records() {
            self.reconcile(status);
        }
    }

    /// One record, reconciled if its lease expired (see `reconcile_records`).
    pub(super) fn reconcile(&self, mut status: JobStatus) -> JobStatus {
        if status.replica == self.replica || !lease_expired(&status, self.lease()) {
            return status;
        }
        // If its version was renamed into place before the stop, the job
        // did succeed: say so, or a client trusting the record would train
        // and publish it again.
        match published_by(&self.model_dir, &status.model, &status.job_id) {
            Some(result) => {
                tracing::info!(job = %status.job_id, model = %status.model, version = result.version, replica = %status.replica, "a job cut off after publishing is marked succeeded");
                status.state = JobState::Succeeded;
                status.result = Some(result);
                status.error = String::new();
            }
            None => {
                tracing::warn!(job = %status.job_id, model = %status.model, replica = %status.replica, "a job whose replica stopped is marked interrupted");
                status.state = JobState::Interrupted;
                status.error = if status.replica.is_empty() {
                    "the server stopped before the job finished".into()
                } else {
                    format!(
                        "the server stopped before the job finished (replica {} stopped renewing it)",
                        status.replica
                    )
                };
            }
        }
        status.finished_unix_ms = now_ms();
        status.heartbeat_unix_ms = 0;
        self.persist(&status);
        let _ = std::fs::remove_file(self.cancel_path(&status.job_id));
        status
    }

    /// Every readable record, in no particular order.
    pub(super) fn read_records(&self) -> Vec<JobStatus> {
        let Ok(entries) = std::fs::read_dir(&self.jobs_dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match read_record_file(&path) {
                Some(Ok(s)) => out.push(s),
                Some(Err(e)) => {
                    tracing::warn!(file = %path.display(), error = %e, "skipping unreadable job record")
                }
                None => {} // pruned meanwhile
            }
        }
        out
    }

    /// The record of job `id`, if there is a readable one.
    /// (Reconciled first if its replica stopped renewing it.)
    pub(super) fn read_record(&self, id: &str) -> Option<JobStatus> {
        match read_record_file(&self.record_path(id))? {
            Ok(s) => Some(self.reconcile(s)),
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "unreadable job record");
                None
            }
        }
    }

    /// Asks the replica that owns a job to cancel it (at its next
    /// heartbeat); returns the record as it stands.
    pub(super) fn cancel_remote(&self, status: JobStatus) -> Result<JobStatus, EngineError> {
        if status.state.is_final() {
            return Err(TrainingError::AlreadyEnded {
                id: status.job_id,
                state: status.state,
            }
            .into());
        }
        write_atomic(&self.cancel_path(&status.job_id), self.replica.as_bytes()).map_err(|e| {
            EngineError::Internal(format!(
                "writing the cancel request of {}: {e}",
                status.job_id
            ))
        })?;
        tracing::info!(job = %status.job_id, owner = %status.replica, "asked the owning replica to cancel a job");
        Ok(status)
    }

    /// The heartbeat thread: every `heartbeat`, rewrites the records of this
    /// server's queued and running jobs (with their latest progress, which
    /// other replicas' watchers read), picks up cancel requests, and at
    /// every lease reconciles the records of replicas that stopped.
    pub(super) fn heartbeat_loop(self: Arc<Self>) {
        let mut beats = 0u32;
        loop {
            {
                let queue = lock(&self.queue);
                if queue.stopping {
                    return;
                }
                let (queue, _) = self
                    .beat
                    .wait_timeout(queue, self.config.heartbeat)
                    .unwrap_or_else(|p| p.into_inner());
                if queue.stopping {
                    return;
                }
            }
            let jobs: Vec<_> = lock(&self.jobs).values().cloned().collect();
            for job in jobs {
                let id = {
                    let mut s = lock(&job.status);
                    if s.state.is_final() {
                        continue;
                    }
                    s.heartbeat_unix_ms = now_ms();
                    // Under the status lock: a final state written by
                    // `finish` is never overwritten by an older beat.
                    self.persist(&s);
                    s.job_id.clone()
                };
                if self.cancel_path(&id).exists() && !job.cancel.load(Ordering::Relaxed) {
                    tracing::info!(job = %id, "cancel requested through another replica");
                    let _ = self.cancel_local(&job);
                }
            }
            beats += 1;
            if beats.is_multiple_of(super::LEASE_HEARTBEATS) {
                self.reconcile_records();
            }
        }
    }

    pub(super) fn record_path(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(format!("{id}.json"))
    }

    pub(super) fn cancel_path(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(format!("{id}.cancel"))
    }

    /// Writes the job's record atomically. A failure is logged, not fatal:
    /// the job itself is unaffected, only its durability.
    pub(super) fn persist(&self, status: &JobStatus) {
        let write = || -> Result<(), String> {
            std::fs::create_dir_all(&self.jobs_dir).map_err(|e| e.to_string())?;
            let bytes = serde_json::to_vec_pretty(status).map_err(|e| e.to_string())?;
            write_atomic(&self.record_path(&status.job_id), &bytes).map_err(|e| e.to_string())
        };
        if let Err(e) = write() {
            tracing::warn!(job = %status.job_id, error = %e, "could not write the job record");
        }
    }

    /// Drops the oldest finished records past `max_job_records` (every
    /// replica's: they share the folder), and this server's jobs with them.
    pub(super) fn prune_records(&self) {
        let mut finished: Vec<(i64, String)> = self
            .read_records()
            .into_iter()
            .filter(|s| s.state.is_final())
            .map(|s| (s.created_unix_ms, s.job_id))
            .collect();
        finished.sort();
        let excess = finished.len().saturating_sub(self.config.max_job_records);
        let mut jobs = lock(&self.jobs);
        for key in finished.into_iter().take(excess) {
            let _ = std::fs::remove_file(self.record_path(&key.1));
            let _ = std::fs::remove_file(self.cancel_path(&key.1));
            jobs.remove(&key);
        }
        // Jobs whose records could not be written count too.
        let local: Vec<_> = jobs
            .iter()
            .filter(|(_, j)| lock(&j.status).state.is_final())
            .map(|(k, _)| k.clone())
            .collect();
        let excess = local.len().saturating_sub(self.config.max_job_records);
        for key in local.into_iter().take(excess) {
            jobs.remove(&key);
        }
    }
}

/// The result recorded in the provenance file of a version of `model` that
/// job `job_id` published, if one did.
fn published_by(model_dir: &Path, model: &str, job_id: &str) -> Option<JobResult> {
    #[derive(Deserialize)]
    struct Provenance {
        job_id: String,
        result: Option<JobResult>,
    }
    if !valid_model_name(model) {
        return None;
    }
    let root = model_dir.join(model);
    for entry in std::fs::read_dir(&root).ok()?.flatten() {
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(bytes) = std::fs::read(entry.path().join(PROVENANCE_FILE)) else {
            continue;
        };
        let Ok(p) = serde_json::from_slice::<Provenance>(&bytes) else {
            continue;
        };
        if p.job_id == job_id {
            let mut result = p.result.unwrap_or(JobResult {
                model: model.to_string(),
                version,
                epochs_run: 0,
                final_train_loss: 0.0,
                best_validation_loss: None,
                stopped_early: false,
            });
            result.version = version;
            return Some(result);
        }
    }
    None
}
