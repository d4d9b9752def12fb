//! Following a job for WatchTraining, on the replica that runs it (its
//! recorded events, woken at each change) or on any other replica sharing
//! the model directory (its record, re-read every [`RECORD_POLL`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::job::Job;
use super::records::{lease_expired, read_record_file};
use super::{lock, JobState, JobStatus};
use crate::model::train::Progress;

/// How often a watcher on another replica re-reads the job's record. The
/// owner rewrites it at each epoch end and heartbeat, so faster gains little.
const RECORD_POLL: Duration = Duration::from_millis(250);

/// A watcher's view of one job.
pub struct JobWatch(Inner);

enum Inner {
    /// A job of this server: its recorded events, and a wake-up per change.
    Local {
        job: Arc<Job>,
        rx: watch::Receiver<u64>,
    },
    /// Another replica's job: its record, and the progress last reported.
    Record {
        path: PathBuf,
        lease: Duration,
        status: Box<JobStatus>,
        sent: Option<Progress>,
    },
}

impl JobWatch {
    pub(super) fn local(job: Arc<Job>) -> JobWatch {
        let rx = job.changed.subscribe();
        JobWatch(Inner::Local { job, rx })
    }

    pub(super) fn record(path: PathBuf, lease: Duration, status: JobStatus) -> JobWatch {
        JobWatch(Inner::Record {
            path,
            lease,
            status: Box::new(status),
            sent: None,
        })
    }

    /// True for a job this server runs (it ends when this server stops).
    pub fn is_local(&self) -> bool {
        matches!(self.0, Inner::Local { .. })
    }

    /// Progress events recorded so far (a record keeps only the latest:
    /// a watcher on another replica starts from it either way).
    pub fn recorded(&self) -> usize {
        match &self.0 {
            Inner::Local { job, .. } => lock(&job.events).len(),
            Inner::Record { .. } => 0,
        }
    }

    /// Progress events from index `cursor` on (advancing it), and the job's
    /// status. From a record: its progress when it changed since the last
    /// read (while the job runs), and its state; a record whose owner stopped renewing it reads
    /// as INTERRUPTED (a live replica marks it so on disk within a lease).
    pub fn read(&mut self, cursor: &mut usize) -> (Vec<Progress>, JobStatus) {
        match &mut self.0 {
            Inner::Local { job, rx } => {
                // Mark the notification seen before reading, so a change
                // after the read wakes `changed`.
                rx.borrow_and_update();
                let events = lock(&job.events).get(*cursor..).unwrap_or(&[]).to_vec();
                *cursor += events.len();
                (events, job.status())
            }
            Inner::Record {
                path,
                lease,
                status,
                sent,
            } => {
                match read_record_file(path) {
                    Some(Ok(s)) => **status = s,
                    Some(Err(e)) => {
                        tracing::warn!(file = %path.display(), error = %e, "unreadable job record; keeping the last one read")
                    }
                    None => {
                        // Pruned: it had ended long ago; keep the last state.
                    }
                }
                if lease_expired(status, *lease) {
                    status.state = JobState::Interrupted;
                    status.error = format!(
                        "the server stopped before the job finished (replica {} stopped renewing it)",
                        status.replica
                    );
                }
                let mut events = Vec::new();
                // An ended job's last progress is in its final state.
                if !status.state.is_final() && status.progress.is_some() && status.progress != *sent
                {
                    events.extend(status.progress.clone());
                    *sent = status.progress.clone();
                    *cursor += 1;
                }
                (events, (**status).clone())
            }
        }
    }

    /// Waits for the next change; false when the job can change no more.
    pub async fn changed(&mut self) -> bool {
        match &mut self.0 {
            Inner::Local { rx, .. } => rx.changed().await.is_ok(),
            Inner::Record { .. } => {
                tokio::time::sleep(RECORD_POLL).await;
                true
            }
        }
    }
}
