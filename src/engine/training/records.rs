//! Durable job records: one JSON file per job in `<model-dir>/.jobs/`,
//! rewritten atomically at each state change; reconciled at start (a record
//! found QUEUED or RUNNING was cut off by a stop) and pruned past a limit.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{lock, now_ms, Job, JobResult, JobState, JobStatus, Training};
use crate::engine::registry::{valid_model_name, PROVENANCE_FILE};
use crate::formats::files::write_atomic;

pub(super) const JOBS_DIR: &str = ".jobs";

impl Training {
    pub(super) fn reload_records(&self) {
        let Ok(entries) = std::fs::read_dir(&self.jobs_dir) else {
            return;
        };
        let mut jobs = lock(&self.jobs);
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobStatus>(&b).map_err(|e| e.to_string()));
            let mut status = match parsed {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "skipping unreadable job record");
                    continue;
                }
            };
            if !status.state.is_final() {
                // Cut off by a stop. If its version was renamed into place
                // before the stop, the job did succeed: say so, or a client
                // trusting the record would train and publish it again.
                match published_by(&self.model_dir, &status.model, &status.job_id) {
                    Some(result) => {
                        tracing::info!(job = %status.job_id, model = %status.model, version = result.version, "a job cut off after publishing is marked succeeded");
                        status.state = JobState::Succeeded;
                        status.result = Some(result);
                        status.error = String::new();
                    }
                    None => {
                        status.state = JobState::Interrupted;
                        status.error = "the server stopped before the job finished".into();
                    }
                }
                status.finished_unix_ms = now_ms();
                self.persist(&status);
            }
            let key = (status.created_unix_ms, status.job_id.clone());
            jobs.insert(key, Job::new(status, None));
        }
        drop(jobs);
        self.prune_records();
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(format!("{id}.json"))
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

    /// Drops the oldest finished jobs past `max_job_records`.
    pub(super) fn prune_records(&self) {
        let mut jobs = lock(&self.jobs);
        let finished: Vec<_> = jobs
            .iter()
            .filter(|(_, j)| lock(&j.status).state.is_final())
            .map(|(k, _)| k.clone())
            .collect();
        let excess = finished.len().saturating_sub(self.config.max_job_records);
        for key in finished.into_iter().take(excess) {
            jobs.remove(&key);
            let _ = std::fs::remove_file(self.record_path(&key.1));
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
