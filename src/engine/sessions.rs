//! The session store: id → model version, per-layer h, step index, the last
//! reply (for exactly-once retries); idle expiry and a cap on live sessions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::batcher::StepOutcome;
use super::registry::ServedModel;
use super::EngineError;

/// How many expired ids are remembered, so a late step hears "expired"
/// rather than "not found". Bounded so expiry cannot grow memory.
const EXPIRED_MEMORY: usize = 65_536;

/// A session's exportable state (GetSessionState / OpenSession resume).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedState {
    pub model: String,
    pub version: u64,
    pub step_index: u64,
    pub num_layers: usize,
    pub hidden_size: usize,
    /// [layers × hidden], layer 0 first.
    pub h: Vec<f32>,
}

/// The last answered step message, kept to answer its retry.
pub struct LastReply {
    pub start_step: u64,
    pub digest: u64,
    pub outcome: Arc<StepOutcome>,
}

pub struct SessionData {
    /// [layers × hidden].
    pub h: Vec<f32>,
    pub step_index: u64,
    pub last: Option<LastReply>,
    pub closed: bool,
    pub last_used: Instant,
}

pub struct Session {
    pub id: String,
    pub key: Option<String>,
    /// The tenant (auth token name) that opened it; None without auth.
    pub owner: Option<String>,
    pub model: Arc<ServedModel>,
    data: Mutex<SessionData>,
}

impl Session {
    pub fn lock(&self) -> MutexGuard<'_, SessionData> {
        // A panic while holding the lock cannot leave h half-written (it is
        // replaced whole), so a poisoned lock's data is still consistent.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn export(&self) -> ExportedState {
        let d = self.lock();
        let c = self.model.model.config();
        ExportedState {
            model: self.model.name.clone(),
            version: self.model.version,
            step_index: d.step_index,
            num_layers: c.num_layers,
            hidden_size: c.hidden_size,
            h: d.h.clone(),
        }
    }
}

/// What an open asks for; the model is already resolved.
pub struct OpenParams {
    pub key: Option<String>,
    /// The caller's tenant (auth token name); None without auth.
    pub owner: Option<String>,
    /// Initial h [layers × hidden]; zeros when None.
    pub initial: Option<Vec<f32>>,
    /// Step index to start at (a resumed export); 0 otherwise.
    pub step_index: u64,
}

struct Inner {
    live: HashMap<String, Arc<Session>>,
    /// (owner, client key) → session id: each tenant has its own key space.
    keys: HashMap<(Option<String>, String), String>,
    expired: HashSet<String>,
    expired_order: VecDeque<String>,
}

pub struct SessionStore {
    inner: Mutex<Inner>,
    max_sessions: usize,
    ttl: Duration,
}

/// 128 random bits from the OS-seeded CSPRNG, hex: unguessable ids.
pub(crate) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl SessionStore {
    pub fn new(max_sessions: usize, ttl: Duration) -> Self {
        SessionStore {
            inner: Mutex::new(Inner {
                live: HashMap::new(),
                keys: HashMap::new(),
                expired: HashSet::new(),
                expired_order: VecDeque::new(),
            }),
            max_sessions,
            ttl,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn len(&self) -> usize {
        self.inner().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens a session, or with a known key returns the live one (created = false).
    pub fn open(
        &self,
        model: Arc<ServedModel>,
        params: OpenParams,
    ) -> Result<(Arc<Session>, bool), EngineError> {
        let now = Instant::now();
        let mut inner = self.inner();
        if let Some(key) = &params.key {
            if let Some(id) = inner
                .keys
                .get(&(params.owner.clone(), key.clone()))
                .cloned()
            {
                if let Some(s) = inner.live.get(&id).cloned() {
                    if !self.idle_too_long(&s, now) {
                        if s.model.name != model.name || s.model.version != model.version {
                            return Err(EngineError::FailedPrecondition(format!(
                                "session key '{key}' belongs to a session on model '{}' version {}, not '{}' version {}",
                                s.model.name, s.model.version, model.name, model.version
                            )));
                        }
                        s.lock().last_used = now;
                        return Ok((s, false));
                    }
                    Self::expire_locked(&mut inner, &id);
                }
            }
        }
        if inner.live.len() >= self.max_sessions {
            // Reclaim idle sessions before refusing: never evict a live one.
            self.expire_idle_locked(&mut inner, now);
            if inner.live.len() >= self.max_sessions {
                return Err(EngineError::ResourceExhausted(format!(
                    "session limit reached: {} live sessions (max {}); close sessions or retry later",
                    inner.live.len(),
                    self.max_sessions
                )));
            }
        }
        let c = model.model.config();
        let size = c.num_layers * c.hidden_size;
        let h = params.initial.unwrap_or_else(|| vec![0.0; size]);
        let id = new_id();
        let s = Arc::new(Session {
            id: id.clone(),
            key: params.key.clone(),
            owner: params.owner.clone(),
            model,
            data: Mutex::new(SessionData {
                h,
                step_index: params.step_index,
                last: None,
                closed: false,
                last_used: now,
            }),
        });
        inner.live.insert(id.clone(), s.clone());
        if let Some(k) = params.key {
            inner.keys.insert((params.owner, k), id);
        }
        Ok((s, true))
    }

    fn idle_too_long(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.lock().last_used) > self.ttl
    }

    fn expire_locked(inner: &mut Inner, id: &str) {
        if let Some(s) = inner.live.remove(id) {
            s.lock().closed = true;
            if let Some(k) = &s.key {
                let k = (s.owner.clone(), k.clone());
                if inner.keys.get(&k).map(String::as_str) == Some(id) {
                    inner.keys.remove(&k);
                }
            }
            inner.expired.insert(id.to_string());
            inner.expired_order.push_back(id.to_string());
            while inner.expired_order.len() > EXPIRED_MEMORY {
                if let Some(old) = inner.expired_order.pop_front() {
                    inner.expired.remove(&old);
                }
            }
        }
    }

    /// The live session `id`, marked as used now. Expired → SessionExpired.
    pub fn get(&self, id: &str) -> Result<Arc<Session>, EngineError> {
        let now = Instant::now();
        let mut inner = self.inner();
        match inner.live.get(id).cloned() {
            Some(s) => {
                let idle = now.saturating_duration_since(s.lock().last_used);
                if idle > self.ttl {
                    Self::expire_locked(&mut inner, id);
                    return Err(self.expired_error(id, Some(idle)));
                }
                s.lock().last_used = now;
                Ok(s)
            }
            None if inner.expired.contains(id) => Err(self.expired_error(id, None)),
            None => Err(EngineError::SessionNotFound(id.to_string())),
        }
    }

    fn expired_error(&self, id: &str, idle: Option<Duration>) -> EngineError {
        EngineError::SessionExpired {
            id: id.to_string(),
            idle_secs: idle.unwrap_or(self.ttl).as_secs(),
            ttl_secs: self.ttl.as_secs(),
        }
    }

    /// [`Self::get`] for a caller: another tenant's session is NOT_FOUND,
    /// exactly as a missing one (no way to probe ids across tenants).
    pub fn get_owned(&self, id: &str, owner: Option<&str>) -> Result<Arc<Session>, EngineError> {
        let foreign = self
            .inner()
            .live
            .get(id)
            .is_some_and(|s| s.owner.as_deref() != owner);
        if foreign {
            return Err(EngineError::SessionNotFound(id.to_string()));
        }
        self.get(id)
    }

    /// Closes a caller's session; returns its step index.
    pub fn close(&self, id: &str, owner: Option<&str>) -> Result<u64, EngineError> {
        let s = self.get_owned(id, owner)?;
        let mut inner = self.inner();
        inner.live.remove(id);
        if let Some(k) = &s.key {
            let k = (s.owner.clone(), k.clone());
            if inner.keys.get(&k).map(String::as_str) == Some(id) {
                inner.keys.remove(&k);
            }
        }
        let mut d = s.lock();
        d.closed = true;
        Ok(d.step_index)
    }

    /// Expires every session idle longer than the TTL; returns how many.
    pub fn sweep(&self) -> usize {
        let mut inner = self.inner();
        self.expire_idle_locked(&mut inner, Instant::now())
    }

    fn expire_idle_locked(&self, inner: &mut Inner, now: Instant) -> usize {
        let idle: Vec<String> = inner
            .live
            .iter()
            .filter(|(_, s)| self.idle_too_long(s, now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &idle {
            Self::expire_locked(inner, id);
        }
        idle.len()
    }
}
