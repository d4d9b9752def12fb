//! The session store: id → model version, per-layer h, step index, the last
//! reply (for exactly-once retries); idle expiry and a cap on live sessions.
//!
//! Every operation on the request path is O(1) or O(log n): the map is cut
//! into shards with a lock each, the live count is an atomic, and expiry
//! works from a per-shard deadline heap that steps never touch (a session
//! used since its entry was queued is re-queued when the entry comes due).
//! Neither a refusal at the cap nor the background sweep scans every session.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::ids;
use super::owner::Owner;
use super::registry::ServedModel;
use super::state::{HiddenState, SessionData, SessionState};
use super::EngineError;

/// A caller's key-space entry: (owner hash, client key).
fn key_entry(owner: &Owner, key: &str) -> (Vec<u8>, String) {
    (owner.hash(), key.to_string())
}

/// How many expired ids are remembered, so a late step hears "expired"
/// rather than "not found". Bounded so expiry cannot grow memory.
const EXPIRED_MEMORY: usize = 65_536;

/// A session's exportable state (GetSessionState / OpenSession resume).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedState {
    pub model: String,
    pub version: u64,
    pub step_index: u64,
    pub hidden: HiddenState,
}

pub struct Session {
    pub id: String,
    pub key: Option<String>,
    /// The tenant that opened it.
    pub owner: Owner,
    pub model: Arc<ServedModel>,
    /// What the model's worker reads and writes; the worker holds only this.
    state: Arc<SessionState>,
}

impl Drop for Session {
    // Closed, expired or refused after creation: the model's count follows
    // the session's life exactly, with no walk over the table.
    fn drop(&mut self) {
        self.model
            .worker
            .stats
            .sessions
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Session {
    pub fn lock(&self) -> MutexGuard<'_, SessionData> {
        self.state.lock()
    }

    /// The state a step job carries to the worker.
    pub(super) fn state(&self) -> &Arc<SessionState> {
        &self.state
    }

    pub fn export(&self) -> ExportedState {
        let d = self.lock();
        let c = self.model.model.config();
        ExportedState {
            model: self.model.name.clone(),
            version: self.model.version,
            step_index: d.step_index,
            hidden: HiddenState {
                layers: c.num_layers,
                hidden: c.hidden_size,
                values: d.h.clone(),
            },
        }
    }
}

/// What an open asks for; the model is already resolved.
pub struct OpenParams {
    pub key: Option<String>,
    /// The caller's tenant.
    pub owner: Owner,
    /// Initial h [layers × hidden]; zeros when None.
    pub initial: Option<Vec<f32>>,
    /// Step index to start at (a resumed export); 0 otherwise.
    pub step_index: u64,
    /// The last reply, for a session resumed from its snapshot.
    pub last: Option<super::state::LastReply>,
}

/// A session read back from a store, ready to be made live again.
pub struct Restored {
    pub id: String,
    pub key: Option<String>,
    pub owner: Owner,
    pub model: Arc<ServedModel>,
    pub data: SessionData,
}

/// Shards of the session map: enough that a step's lookup rarely waits for
/// another's, few enough that a sweep's pass over them is cheap.
const SHARDS: usize = 16;

struct Shard {
    live: HashMap<String, Arc<Session>>,
    /// (deadline when queued, id), soonest first. Lazy: a popped entry
    /// whose session was used since is pushed again with its new deadline.
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
}

/// Ids expired recently, so a late step hears "expired", not "not found".
struct Expired {
    set: HashSet<String>,
    order: VecDeque<String>,
}

type KeyMap = HashMap<(Vec<u8>, String), String>;

pub struct SessionStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// (owner hash, client key) → session id: each tenant has its own key space.
    /// Lock order: `keys` before a shard, never the other way round.
    keys: Mutex<KeyMap>,
    expired: Mutex<Expired>,
    live: AtomicUsize,
    max_sessions: usize,
    ttl: Duration,
    /// Ids closed (true) or expired (false) since the store last took them
    /// (a durable store removes them from its copy); None: nobody asks.
    removed: Option<Mutex<Vec<(String, bool)>>>,
}

/// 128 random bits from the OS-seeded CSPRNG, hex: unguessable ids.
pub(crate) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent at each
    // statement, so a panic elsewhere cannot leave a poisoned half-update.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SessionStore {
    pub fn new(max_sessions: usize, ttl: Duration) -> Self {
        SessionStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        live: HashMap::new(),
                        deadlines: BinaryHeap::new(),
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            keys: Mutex::new(HashMap::new()),
            expired: Mutex::new(Expired {
                set: HashSet::new(),
                order: VecDeque::new(),
            }),
            live: AtomicUsize::new(0),
            max_sessions,
            ttl,
            removed: None,
        }
    }

    /// Remembers closed and expired ids for [`Self::take_removed`] (a
    /// durable store's deletions).
    pub fn track_removed(mut self) -> Self {
        self.removed = Some(Mutex::new(Vec::new()));
        self
    }

    /// Ids closed (true) or expired (false) since the last call.
    pub fn take_removed(&self) -> Vec<(String, bool)> {
        self.removed
            .as_ref()
            .map(|r| std::mem::take(&mut *lock(r)))
            .unwrap_or_default()
    }

    /// Gives back ids a failed write did not remove.
    pub fn return_removed(&self, ids: Vec<(String, bool)>) {
        if let Some(r) = &self.removed {
            lock(r).extend(ids);
        }
    }

    /// Forgets a removal the store has already applied.
    pub fn forget_removed(&self, id: &str) {
        if let Some(r) = &self.removed {
            lock(r).retain(|(i, _)| i != id);
        }
    }

    fn note_removed(&self, id: &str, closed: bool) {
        if let Some(r) = &self.removed {
            lock(r).push((id.to_string(), closed));
        }
    }

    /// Drops the local copy of `id` if its epoch is below `epoch` (another
    /// replica has taken it over).
    pub fn drop_if_older(&self, id: &str, epoch: u64) -> bool {
        let older = self
            .shard(id)
            .live
            .get(id)
            .is_some_and(|s| s.lock().epoch < epoch);
        older && self.drop_local(id)
    }

    /// Whether `id` is live here (no expiry check, no use recorded).
    pub fn holds(&self, id: &str) -> bool {
        self.shard(id).live.contains_key(id)
    }

    /// The id of a caller's live session opened with `key`, if any.
    pub fn id_for_key(&self, owner: &Owner, key: &str) -> Option<String> {
        lock(&self.keys).get(&key_entry(owner, key)).cloned()
    }

    /// Every live session, or only those whose stored copy is behind
    /// (`dirty_refresh`: see [`SessionData::is_dirty`]). One lock at a time:
    /// a step waits for at most one session's copy.
    pub fn collect(&self, dirty_refresh: Option<Duration>) -> Vec<Arc<Session>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let sessions: Vec<Arc<Session>> = lock(shard).live.values().cloned().collect();
            match dirty_refresh {
                None => out.extend(sessions),
                Some(r) => out.extend(sessions.into_iter().filter(|s| s.lock().is_dirty(r))),
            }
        }
        out
    }

    /// Makes a stored session live again under its own id. At the cap it
    /// is refused like an open; an id or key already live here is left as
    /// it is (returns the live one).
    pub fn restore(&self, r: Restored) -> Result<Arc<Session>, EngineError> {
        let mut keys = lock(&self.keys);
        if let Some(s) = self.shard(&r.id).live.get(&r.id).cloned() {
            return Ok(s);
        }
        self.reserve(Instant::now(), Some(&mut *keys))?;
        r.model
            .worker
            .stats
            .sessions
            .fetch_add(1, Ordering::Relaxed);
        let deadline = r.data.last_used + self.ttl;
        let s = Arc::new(Session {
            id: r.id.clone(),
            key: r.key.clone(),
            owner: r.owner,
            model: r.model,
            state: Arc::new(SessionState::new(r.id.clone(), r.data)),
        });
        {
            let mut shard = self.shard(&r.id);
            shard.live.insert(r.id.clone(), s.clone());
            shard.deadlines.push(Reverse((deadline, r.id.clone())));
            Self::compact(&mut shard, self.ttl);
        }
        if let Some(k) = &s.key {
            // A key re-opened here meanwhile keeps its live session.
            keys.entry(key_entry(&s.owner, k)).or_insert(r.id);
        }
        Ok(s)
    }

    /// Drops this process's copy of a session another replica now owns:
    /// not a close (the store keeps it), so it is not reported removed.
    pub fn drop_local(&self, id: &str) -> bool {
        self.take_local(id).is_some()
    }

    /// [`Self::drop_local`], returning the session (closed: a step still in
    /// the worker is answered NOT_FOUND rather than applied) so its state
    /// can be written once more.
    pub fn take_local(&self, id: &str) -> Option<Arc<Session>> {
        let mut keys = lock(&self.keys);
        let s = self.shard(id).live.remove(id)?;
        self.live.fetch_sub(1, Ordering::AcqRel);
        s.lock().closed = true;
        Self::forget_key(&mut keys, &s);
        Some(s)
    }

    fn shard(&self, id: &str) -> MutexGuard<'_, Shard> {
        let n = self.hasher.hash_one(id) as usize % SHARDS;
        lock(&self.shards[n])
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
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
        // Held through the insert when a key is given: two opens with one
        // key must not both create a session.
        let mut keys = params.key.as_ref().map(|_| lock(&self.keys));
        if let (Some(key), Some(map)) = (&params.key, keys.as_mut()) {
            let k = key_entry(&params.owner, key);
            if let Some(id) = map.get(&k).cloned() {
                let found = self.shard(&id).live.get(&id).cloned();
                if let Some(s) = found {
                    if !self.idle_too_long(&s, now) {
                        if s.model.name != model.name || s.model.version != model.version {
                            return Err(EngineError::SessionKeyConflict {
                                key: key.clone(),
                                model: s.model.name.clone(),
                                version: s.model.version,
                                asked_model: model.name.clone(),
                                asked_version: model.version,
                            });
                        }
                        s.lock().last_used = now;
                        return Ok((s, false));
                    }
                    if let Some(s) = self.remove(&id) {
                        Self::forget_key(map, &s);
                        self.remember_expired(&id);
                        self.note_removed(&id, false);
                    }
                }
            }
        }
        self.reserve(now, keys.as_deref_mut())?;
        let c = model.model.config();
        let size = c.num_layers * c.hidden_size;
        let h = params.initial.unwrap_or_else(|| vec![0.0; size]);
        let id = new_id();
        model.worker.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let s = Arc::new(Session {
            id: id.clone(),
            key: params.key.clone(),
            owner: params.owner.clone(),
            model,
            state: Arc::new(SessionState::new(
                id.clone(),
                SessionData {
                    h,
                    step_index: params.step_index,
                    last: params.last,
                    closed: false,
                    last_used: now,
                    saved: None,
                    epoch: 0,
                    unconfirmed: false,
                },
            )),
        });
        {
            let mut shard = self.shard(&id);
            shard.live.insert(id.clone(), s.clone());
            shard.deadlines.push(Reverse((now + self.ttl, id.clone())));
            Self::compact(&mut shard, self.ttl);
        }
        if let (Some(k), Some(map)) = (&params.key, keys.as_mut()) {
            map.insert(key_entry(&params.owner, k), id);
        }
        Ok((s, true))
    }

    /// Counts one more live session, reclaiming idle ones at the cap before
    /// refusing: never evicts a live one.
    fn reserve(&self, now: Instant, keys: Option<&mut KeyMap>) -> Result<(), EngineError> {
        let mut keys = keys;
        let mut reclaimed = false;
        loop {
            let n = self.live.load(Ordering::Acquire);
            if n >= self.max_sessions {
                if reclaimed {
                    return Err(EngineError::SessionLimit {
                        live: n,
                        max: self.max_sessions,
                    });
                }
                reclaimed = true;
                match keys.as_deref_mut() {
                    Some(map) => self.expire_due(now, map),
                    None => self.expire_due(now, &mut lock(&self.keys)),
                };
                continue;
            }
            if self
                .live
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    /// Rebuilds a shard's heap when stale entries (closed sessions) outnumber
    /// the live ones, so opening and closing in a loop cannot grow it.
    fn compact(shard: &mut Shard, ttl: Duration) {
        if shard.deadlines.len() > 2 * shard.live.len() + 64 {
            let fresh = shard
                .live
                .values()
                .map(|s| Reverse((s.lock().last_used + ttl, s.id.clone())))
                .collect();
            shard.deadlines = fresh;
        }
    }

    fn idle_too_long(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.lock().last_used) > self.ttl
    }

    /// Takes `id` out of the live map (and counts it expired); the caller
    /// drops its key with [`Self::forget_key`] under the keys lock.
    fn remove(&self, id: &str) -> Option<Arc<Session>> {
        let s = self.shard(id).live.remove(id)?;
        self.live.fetch_sub(1, Ordering::AcqRel);
        s.lock().closed = true;
        Some(s)
    }

    fn forget_key(keys: &mut KeyMap, s: &Session) {
        if let Some(k) = &s.key {
            let k = key_entry(&s.owner, k);
            if keys.get(&k) == Some(&s.id) {
                keys.remove(&k);
            }
        }
    }

    fn remember_expired(&self, id: &str) {
        let mut e = lock(&self.expired);
        if e.set.insert(id.to_string()) {
            e.order.push_back(id.to_string());
        }
        while e.order.len() > EXPIRED_MEMORY {
            if let Some(old) = e.order.pop_front() {
                e.set.remove(&old);
            }
        }
    }

    fn expire(&self, id: &str) {
        if let Some(s) = self.remove(id) {
            Self::forget_key(&mut lock(&self.keys), &s);
            self.remember_expired(id);
            self.note_removed(id, false);
        }
    }

    /// The live session `id`, marked as used now. Expired → SessionExpired.
    pub fn get(&self, id: &str) -> Result<Arc<Session>, EngineError> {
        self.get_owned_inner(id, None)
    }

    fn get_owned_inner(
        &self,
        id: &str,
        owner: Option<Option<&str>>,
    ) -> Result<Arc<Session>, EngineError> {
        ids::check_id("session_id", id)?;
        let now = Instant::now();
        let found = self.shard(id).live.get(id).cloned();
        match found {
            Some(s) if owner.is_some_and(|o| !s.owner.matches(o)) => {
                Err(EngineError::SessionNotFound(id.to_string()))
            }
            Some(s) => {
                let mut d = s.lock();
                let idle = now.saturating_duration_since(d.last_used);
                if idle > self.ttl {
                    drop(d);
                    self.expire(id);
                    return Err(self.expired_error(id, Some(idle)));
                }
                d.last_used = now;
                drop(d);
                Ok(s)
            }
            None if lock(&self.expired).set.contains(id) => Err(self.expired_error(id, None)),
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
        self.get_owned_inner(id, Some(owner))
    }

    /// Closes a caller's session; returns its step index.
    pub fn close(&self, id: &str, owner: Option<&str>) -> Result<u64, EngineError> {
        let s = self.get_owned(id, owner)?;
        if let Some(s) = self.remove(id) {
            Self::forget_key(&mut lock(&self.keys), &s);
            self.note_removed(id, true);
        }
        let step_index = s.lock().step_index;
        Ok(step_index)
    }

    /// Expires every session idle longer than the TTL; returns how many.
    /// Visits only heap entries that came due, not every session.
    pub fn sweep(&self) -> usize {
        self.expire_due(Instant::now(), &mut lock(&self.keys))
    }

    fn expire_due(&self, now: Instant, keys: &mut KeyMap) -> usize {
        let mut expired = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            while let Some(Reverse((deadline, _))) = shard.deadlines.peek() {
                if *deadline >= now {
                    break;
                }
                let Some(Reverse((_, id))) = shard.deadlines.pop() else {
                    break;
                };
                let Some(s) = shard.live.get(&id).cloned() else {
                    continue; // closed or expired already
                };
                let last_used = s.lock().last_used;
                if now.saturating_duration_since(last_used) > self.ttl {
                    shard.live.remove(&id);
                    self.live.fetch_sub(1, Ordering::AcqRel);
                    s.lock().closed = true;
                    expired.push(s);
                } else {
                    shard.deadlines.push(Reverse((last_used + self.ttl, id)));
                }
            }
        }
        for s in &expired {
            Self::forget_key(keys, s);
            self.remember_expired(&s.id);
            self.note_removed(&s.id, false);
        }
        expired.len()
    }
}
