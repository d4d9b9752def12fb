//! Triton sequence ids → engine sessions. A sequence is keyed by (tenant,
//! model, id), not by the stream that carries it, so it spans unary and
//! streaming calls and one stream carries many sequences.
//!
//! The session of a sequence is opened with the key [`SeqKey::session_key`],
//! so the session store keeps it across restarts and replicas; this table
//! only caches the sessions this process holds and remembers the expired
//! ones. It holds a weak handle to each session: the engine owns sessions
//! and expires them; an entry whose session is gone is looked up by key. Entries are pruned when the table has grown past twice
//! its live size, so it is bounded by the engine's session cap.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::engine::Session;

/// Longest string sequence id (Triton's limit, `core/src/tritonserver.cc`).
pub const MAX_STRING_ID_LEN: usize = 128;

/// How many expired sequence keys are remembered, so a late request hears
/// "expired" rather than only "must specify START". Bounded memory.
const EXPIRED_MEMORY: usize = 65_536;

/// A correlation id: integers and strings are different ids, as in Triton.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SeqId {
    Int(u64),
    Str(String),
}

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeqId::Int(n) => write!(f, "{n}"),
            SeqId::Str(s) => write!(f, "'{}'", crate::engine::ids::clip(s)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeqKey {
    pub owner: Option<String>,
    pub model: String,
    pub id: SeqId,
}

impl SeqKey {
    /// The engine session key of this sequence (scoped to the tenant by the
    /// engine, like gru.v1's `session_key`): readable where it can be, a
    /// SHA-256 of (model, id) where the id would break the key rules.
    pub fn session_key(&self) -> String {
        let readable = match &self.id {
            SeqId::Int(n) => format!("triton/{}/i{n}", self.model),
            SeqId::Str(s) => format!("triton/{}/s{s}", self.model),
        };
        if crate::engine::ids::check_key("session_key", &readable).is_ok() {
            return readable;
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(self.model.as_bytes());
        ctx.update(&[0]);
        ctx.update(readable.as_bytes());
        let hex: String = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("triton/h{hex}")
    }
}

struct Entry {
    session_id: String,
    session: Weak<Session>,
}

/// What a lookup found.
pub enum Found {
    Live(Arc<Session>),
    /// Known once, its session is gone (idle past the TTL).
    Expired,
    Unknown,
}

#[derive(Default)]
struct Table {
    live: HashMap<SeqKey, Entry>,
    expired: HashSet<SeqKey>,
    expired_order: VecDeque<SeqKey>,
    /// Prune once `live` reaches this many entries.
    prune_at: usize,
}

#[derive(Default)]
pub struct Sequences {
    table: Mutex<Table>,
}

/// Smallest pruning threshold: below it the table is never walked.
const MIN_PRUNE_AT: usize = 1024;

impl Table {
    fn remember_expired(&mut self, key: SeqKey) {
        if self.expired.insert(key.clone()) {
            self.expired_order.push_back(key);
        }
        while self.expired_order.len() > EXPIRED_MEMORY {
            if let Some(old) = self.expired_order.pop_front() {
                self.expired.remove(&old);
            }
        }
    }

    /// Drops entries whose session is gone (remembering them as expired).
    fn prune(&mut self) {
        let dead: Vec<SeqKey> = self
            .live
            .iter()
            .filter(|(_, e)| e.session.strong_count() == 0)
            .map(|(k, _)| k.clone())
            .collect();
        for k in dead {
            self.live.remove(&k);
            self.remember_expired(k);
        }
        self.prune_at = (2 * self.live.len()).max(MIN_PRUNE_AT);
    }
}

impl Sequences {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Each critical section leaves the table consistent at every statement.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live session of `key`, if any.
    pub fn find(&self, key: &SeqKey) -> Found {
        let mut t = self.lock();
        let alive = t.live.get(key).map(|e| e.session.upgrade());
        match alive {
            Some(Some(s)) if !s.lock().closed => Found::Live(s),
            Some(_) => {
                t.live.remove(key);
                t.remember_expired(key.clone());
                Found::Expired
            }
            None if t.expired.contains(key) => Found::Expired,
            None => Found::Unknown,
        }
    }

    /// Binds `key` to `session` (a START, or a session found by its key).
    pub fn start(&self, key: SeqKey, session: &Arc<Session>) {
        let mut t = self.lock();
        if t.live.len() >= t.prune_at {
            t.prune();
        }
        t.expired.remove(&key);
        t.live.insert(
            key,
            Entry {
                session_id: session.id.clone(),
                session: Arc::downgrade(session),
            },
        );
    }

    /// Unbinds `key` if it still names `session_id` (an END, or a session
    /// found expired).
    pub fn end(&self, key: &SeqKey, session_id: &str) {
        let mut t = self.lock();
        if t.live.get(key).is_some_and(|e| e.session_id == session_id) {
            t.live.remove(key);
        }
    }

    /// Like [`Self::end`], remembering the sequence as expired.
    pub fn expired(&self, key: &SeqKey, session_id: &str) {
        let mut t = self.lock();
        if t.live.get(key).is_some_and(|e| e.session_id == session_id) {
            t.live.remove(key);
            t.remember_expired(key.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(model: &str, id: SeqId) -> SeqKey {
        SeqKey {
            owner: None,
            model: model.into(),
            id,
        }
    }

    #[test]
    fn session_keys_are_readable_distinct_and_always_valid() {
        let int = key("sine", SeqId::Int(42)).session_key();
        let string = key("sine", SeqId::Str("42".into())).session_key();
        assert_eq!(int, "triton/sine/i42");
        assert_eq!(string, "triton/sine/s42");
        assert_ne!(
            key("sine", SeqId::Int(42)).session_key(),
            key("cosine", SeqId::Int(42)).session_key()
        );
        // 128 four-byte characters (512 bytes) and control characters break
        // the key rules: hashed, still distinct, still valid.
        let long = key("sine", SeqId::Str("𝄞".repeat(MAX_STRING_ID_LEN))).session_key();
        let ctrl = key("sine", SeqId::Str("a\nb".into())).session_key();
        let ctrl2 = key("sine", SeqId::Str("a\tb".into())).session_key();
        for k in [&long, &ctrl, &ctrl2] {
            assert!(k.starts_with("triton/h"), "{k}");
            crate::engine::ids::check_key("session_key", k).unwrap();
        }
        assert_ne!(ctrl, ctrl2);
        assert_ne!(
            key("sine", SeqId::Str("a\nb".into())).session_key(),
            key("cosine", SeqId::Str("a\nb".into())).session_key()
        );
    }
}
