//! A session that survives its server: open by key, step, and when the
//! server is gone or no longer has the session, open the key again and
//! replay from the step index the server reports. Used by
//! examples/tutorial_failover.rs; tests/failover_client.rs checks it against
//! a real server restart.
//!
//! How it stays exactly-once: every step message names the index it starts
//! at (`start_step`), so the server never applies a step twice; a reply lost
//! with the connection is asked for again and answered from the server's last
//! reply. After a failover the re-opened session is at some index `s` (the
//! last checkpoint with a durable session store, 0 with `--session-store
//! memory` after a restart): the helper resends the inputs from `s` on, which
//! it kept, and hands back only the outputs of the new rows. Outputs equal
//! an uninterrupted run's because the state at `s` is exactly the state the
//! server had there.
//!
//! ```ignore
//! let mut s = FailoverSession::open(client, open_request_with_key).await?;
//! let outputs = s.step(&rows).await?;   // k rows in, k output rows out
//! ```

use std::time::Duration;

use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Tries per call before the last error is returned (with `backoff`
/// doubling up to 2 s, about 40 s in all: a restart or a rescheduled pod).
pub const MAX_ATTEMPTS: usize = 25;

/// True for the errors a failover can cure: the server is unreachable or
/// stopping (UNAVAILABLE, or a broken connection, which tonic reports as
/// UNKNOWN or CANCELLED with the transport error as its source), it does not have the
/// session (NOT_FOUND: a restart, or a balancer that moved the key), or the
/// session is at another step than the message says (FAILED_PRECONDITION:
/// restored from an older checkpoint).
pub fn is_failover(s: &Status) -> bool {
    use std::error::Error;
    match s.code() {
        Code::Unavailable | Code::NotFound | Code::FailedPrecondition => true,
        // A status the server sent has no source; one made by this client's
        // transport (connection reset, broken pipe; or CANCELLED "connection
        // closed" when the server dies with the call in flight) has.
        Code::Unknown | Code::Cancelled => s.source().is_some(),
        _ => false,
    }
}

/// One session, opened by `session_key`, with the inputs it may replay.
pub struct FailoverSession {
    client: GruServiceClient<Channel>,
    /// The open request (model, version, key, initial state), re-sent as is.
    open: pb::OpenSessionRequest,
    session_id: String,
    input_size: usize,
    /// The step index the server has acknowledged: rows before it are applied.
    at: u64,
    /// The step index of `kept`'s first row.
    kept_from: u64,
    /// Inputs from `kept_from` on, row-major (input_size columns).
    kept: Vec<f32>,
    /// Rows kept at most (None = the whole sequence); older rows are dropped,
    /// and a failover to an index before the oldest kept row fails.
    max_kept_rows: Option<usize>,
    /// Failovers so far (re-opens after an error).
    pub failovers: usize,
    /// First wait between tries.
    pub backoff: Duration,
}

impl FailoverSession {
    /// Opens (or finds) the session `open.session_key` names; the key must
    /// be set: it is what finds the session again. Keeps every input; see
    /// [`FailoverSession::keep_at_most`].
    pub async fn open(
        client: GruServiceClient<Channel>,
        open: pb::OpenSessionRequest,
    ) -> Result<FailoverSession, Status> {
        if open.session_key.is_empty() {
            return Err(Status::invalid_argument(
                "FailoverSession needs a session_key: re-opening by key is how it fails over",
            ));
        }
        let mut s = FailoverSession {
            client,
            open,
            session_id: String::new(),
            input_size: 0,
            at: 0,
            kept_from: 0,
            kept: Vec::new(),
            max_kept_rows: None,
            failovers: 0,
            backoff: Duration::from_millis(50),
        };
        s.with_retries(|s| Box::pin(s.reopen())).await?;
        s.kept_from = s.at;
        Ok(s)
    }

    /// Keeps at most `rows` input rows for replay (a bounded window): enough
    /// for the steps between two checkpoints of the server's session store,
    /// with margin.
    pub fn keep_at_most(mut self, rows: usize) -> FailoverSession {
        self.max_kept_rows = Some(rows.max(1));
        self
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The step index the server has acknowledged.
    pub fn step_index(&self) -> u64 {
        self.at
    }

    /// The client, with the key's metadata set on every call
    /// (`x-session-key`, so a balancer keeps the session on one replica).
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = self.open.session_key.parse() {
            r.metadata_mut().insert("x-session-key", v);
        }
        r
    }

    /// Opens the key again: the live session, or a new or restored one.
    async fn reopen(&mut self) -> Result<(), Status> {
        let req = self.request(self.open.clone());
        let r = self.client.open_session(req).await?.into_inner();
        if self.input_size == 0 {
            let info = self
                .client
                .get_model(self.request(pb::GetModelRequest {
                    model: r.model.clone(),
                    version: r.version,
                }))
                .await?
                .into_inner()
                .model
                .ok_or_else(|| Status::internal("GetModel returned no model"))?;
            self.input_size = info.input_size as usize;
        }
        self.session_id = r.session_id;
        self.at = r.step_index;
        Ok(())
    }

    /// Steps `rows` (k × input_size, row-major) and returns their outputs
    /// (k × output_size), failing over as often as it takes (bounded).
    pub async fn step(&mut self, rows: &[f32]) -> Result<Vec<f32>, Status> {
        let cols = self.input_size;
        if rows.is_empty() || !rows.len().is_multiple_of(cols) {
            return Err(Status::invalid_argument(format!(
                "{} values are not whole rows of {cols} inputs",
                rows.len()
            )));
        }
        let k = (rows.len() / cols) as u64;
        let end = self.kept_from + (self.kept.len() / cols) as u64;
        debug_assert_eq!(end, self.at, "every kept row was acknowledged");
        self.kept.extend_from_slice(rows);
        let out = self
            .with_retries(|s| Box::pin(s.send_from_ack(end, k)))
            .await;
        if out.is_err() {
            // Not sent for good: forget the rows, the caller may retry them.
            self.kept.truncate(self.kept.len() - rows.len());
            return out;
        }
        self.trim();
        out
    }

    /// Sends the kept rows from the acknowledged index to the end; returns
    /// the outputs of the last `k` (the new rows, which start at `new_from`).
    async fn send_from_ack(&mut self, new_from: u64, k: u64) -> Result<Vec<f32>, Status> {
        let cols = self.input_size;
        let end = new_from + k;
        if self.at < self.kept_from {
            // Not a failover error: re-opening cannot cure it.
            return Err(Status::data_loss(format!(
                "the server's session '{}' is at step {}, but only the inputs from step {} on were kept: \
                 raise keep_at_most",
                self.open.session_key, self.at, self.kept_from
            )));
        }
        if self.at > new_from {
            // The server is past where these rows start: the message was
            // applied and its reply lost. Ask again: a retry of the last
            // message is answered from the server's last reply.
            if self.at != end {
                return Err(Status::internal(format!(
                    "the server's session '{}' is at step {}, inside the message that started at {new_from}",
                    self.open.session_key, self.at
                )));
            }
            self.at = new_from;
        }
        let from = ((self.at - self.kept_from) as usize) * cols;
        let replayed_rows = new_from - self.at;
        let inputs = self.kept[from..].to_vec();
        let rows = (inputs.len() / cols) as u32;
        let req = self.request(pb::StepRequest {
            session_id: self.session_id.clone(),
            inputs: Some(pb::Matrix {
                rows,
                cols: cols as u32,
                values: inputs,
            }),
            start_step: self.at,
            has_start_step: true,
            ..Default::default()
        });
        let r = self.client.step(req).await?.into_inner();
        let ok = match r.result {
            Some(pb::step_response::Result::Ok(ok)) => ok,
            Some(pb::step_response::Result::Error(e)) => {
                return Err(Status::new(Code::from(e.code), e.message))
            }
            None => return Err(Status::internal("a step reply with no result")),
        };
        if ok.next_step != end {
            return Err(Status::internal(format!(
                "the reply ends at step {}, not {end}",
                ok.next_step
            )));
        }
        self.at = end;
        // Outputs of the replayed rows are dropped: the caller had them.
        let mut y = ok.outputs.map(|m| m.values).unwrap_or_default();
        let per_row = y.len() / (replayed_rows + k) as usize;
        Ok(y.split_off(replayed_rows as usize * per_row))
    }

    /// Runs `call`; on an error a failover can cure, re-opens the key (which
    /// resets `at` to the server's index) and runs it again.
    async fn with_retries<T>(
        &mut self,
        mut call: impl for<'a> FnMut(
            &'a mut Self,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, Status>> + 'a>,
        >,
    ) -> Result<T, Status> {
        let mut wait = self.backoff;
        let mut attempt = 1;
        loop {
            let err = match call(self).await {
                Ok(v) => return Ok(v),
                Err(e) if is_failover(&e) && attempt < MAX_ATTEMPTS => e,
                Err(e) => return Err(e),
            };
            // Reopen until it works (the server may still be starting).
            loop {
                attempt += 1;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
                match self.reopen().await {
                    Ok(()) => break,
                    Err(e) if is_failover(&e) && attempt < MAX_ATTEMPTS => continue,
                    Err(e) => {
                        return Err(Status::new(
                            e.code(),
                            format!("failing over after '{}': {}", err.message(), e.message()),
                        ))
                    }
                }
            }
            self.failovers += 1;
        }
    }

    /// Drops the oldest kept rows past `max_kept_rows`.
    fn trim(&mut self) {
        let cols = self.input_size;
        let Some(max) = self.max_kept_rows else {
            return;
        };
        let rows = self.kept.len() / cols;
        if rows > max {
            let drop = rows - max;
            self.kept.drain(..drop * cols);
            self.kept_from += drop as u64;
        }
    }
}
