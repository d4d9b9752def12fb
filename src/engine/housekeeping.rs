//! The engine's background upkeep: idle sessions expire, and the model
//! repository is rescanned when `--model-poll` asks for it (and, while no
//! model is served, every 10 s even with polling off, saying why each time). It lives
//! with the state it keeps (as mini-redis keeps expiry in its `db`), not in
//! the server's start-up code.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError};

impl Engine {
    /// Sweeps expired sessions and rescans the repository until `cancel`.
    /// Lookups also check expiry lazily; the sweep bounds how long an idle
    /// session holds memory. `serving` is told after the first tick that
    /// finds a model served (at once, after the rescan that loads one, or at
    /// the sweep after a training job publishes one), so the server can turn
    /// SERVING.
    pub async fn housekeeping(&self, cancel: CancellationToken, serving: oneshot::Sender<()>) {
        let mut serving = Some(serving);
        let poll = self.config.model_poll;
        let period =
            (self.sessions.ttl() / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut sweep = tokio::time::interval(period);
        // With polling off the rescan branch is disabled; the interval only
        // needs a valid (non-zero) period.
        let mut rescan = tokio::time::interval(if poll.is_zero() {
            Duration::from_secs(3600)
        } else {
            poll
        });
        // While nothing is served the repository is rescanned anyway, even
        // with polling off (a directory created or filled after start is
        // picked up), and the reason is logged each time.
        let mut empty_rescan = tokio::time::interval(Duration::from_secs(10));
        empty_rescan.tick().await;
        // An interval's first tick is immediate: the start-up load was the first scan.
        rescan.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = sweep.tick() => {
                    let n = self.sessions.sweep();
                    if n > 0 {
                        tracing::info!(expired = n, "expired idle sessions");
                    }
                }
                _ = rescan.tick(), if !poll.is_zero() => self.rescan().await,
                _ = empty_rescan.tick(), if poll.is_zero() && !self.has_models() => self.rescan().await,
            }
            // SERVING after the tick (sweep or rescan) that first finds a
            // model; a training job's first model waits for the next sweep.
            if !self.registry.is_empty() {
                if let Some(tx) = serving.take() {
                    let _ = tx.send(());
                }
            }
        }
    }

    async fn rescan(&self) {
        let registry = self.registry.clone();
        match tokio::task::spawn_blocking(move || registry.scan()).await {
            Ok(Ok(added)) if !added.is_empty() => {
                tracing::info!(?added, "rescan loaded new model versions");
            }
            Ok(Ok(_)) => {}
            // A missing directory is reported below, as the reason.
            Ok(Err(EngineError::ModelDirUnreadable { .. })) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "rescanning the model repository failed"),
            Err(e) => tracing::warn!(error = %e, "rescan task failed"),
        }
        if !self.has_models() {
            tracing::warn!(reason = %self.no_models_reason(), "NOT_SERVING");
        }
    }
}
