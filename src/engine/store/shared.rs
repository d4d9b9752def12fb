//! The Redis session store, for several replicas. A session is a hash
//! `gru:s:{id}` (epoch, snapshot, owning replica, tenant hash, key index)
//! and a client key an entry `gru:k:{tenant hash}:{key}` → id, both expiring
//! with the session's TTL. Every change of ownership goes through a Lua
//! script, so it is atomic in Redis:
//! - a takeover (claim) raises the epoch by one and announces it;
//! - a checkpoint writes a session only while the writer's epoch is the
//!   stored one: a replica that lost the session has its write refused and
//!   drops its copy, so a session never forks into two histories.
//!
//! Checkpoints write many sessions per script call (one round trip per
//! batch, never one per step). Every call has a short timeout: an unreachable
//! Redis makes the server keep serving from memory, not hang.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

/// The channel takeovers are announced on: "id epoch replica".
pub const TAKEOVERS: &str = "gru:takeover";
/// The channel a replica asks a live owner on to hand a session over
/// (write its latest state and let go): "id requester".
pub const HANDOFFS: &str = "gru:handoff";
/// `gru:r:{replica}` exists while that replica is alive (a heartbeat).
const ALIVE: &str = "gru:r:";
/// A replica's heartbeat lives this long without renewal.
pub const ALIVE_FOR: Duration = Duration::from_secs(3);

/// 1 when another replica that is alive owns the session.
const PEEK: &str = r#"
local o = redis.call('HGET', KEYS[1], 'owner')
if not o or o == '' or o == ARGV[1] then return 0 end
return redis.call('EXISTS', ARGV[2] .. o)
"#;

/// Lets go of a session this replica owns without writing it.
const RELEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'owner', '')
end
return 1
"#;
const SESSION: &str = "gru:s:";
/// Most sessions one checkpoint script call writes (bounds how long one
/// call holds Redis).
const BATCH: usize = 256;

const CLAIM: &str = r#"
local snap = redis.call('HGET', KEYS[1], 'snap')
if not snap then return false end
local tenant = redis.call('HGET', KEYS[1], 'tenant') or ''
if tenant ~= ARGV[2] then return false end
local e = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local kx = redis.call('HGET', KEYS[1], 'kidx')
if kx and kx ~= '' then redis.call('PEXPIRE', kx, ARGV[3]) end
redis.call('PUBLISH', ARGV[5], ARGV[4] .. ' ' .. e .. ' ' .. ARGV[1])
return {e, snap}
"#;

/// Per session: epoch, snapshot, tenant, key index. A session missing from
/// Redis altogether (Redis restarted or evicted it) is stored again from
/// this replica's copy; one closed elsewhere (a tombstone) or owned at
/// another epoch is refused.
const SAVE: &str = r#"
local refused = {}
for i, k in ipairs(KEYS) do
  local b = 3 + 4 * (i - 1)
  local e = redis.call('HGET', k, 'epoch')
  if e and tonumber(e) == tonumber(ARGV[b + 1]) then
    redis.call('HSET', k, 'snap', ARGV[b + 2], 'owner', ARGV[1])
    redis.call('PEXPIRE', k, ARGV[2])
    local kx = redis.call('HGET', k, 'kidx')
    if kx and kx ~= '' then redis.call('PEXPIRE', kx, ARGV[2]) end
  elseif not e and redis.call('EXISTS', k) == 0 then
    redis.call('HSET', k, 'epoch', ARGV[b + 1], 'snap', ARGV[b + 2], 'owner', ARGV[1],
      'tenant', ARGV[b + 3], 'kidx', ARGV[b + 4])
    redis.call('PEXPIRE', k, ARGV[2])
    if ARGV[b + 4] ~= '' then
      redis.call('SET', ARGV[b + 4], string.sub(k, #ARGV[3] + 1), 'PX', ARGV[2], 'NX')
    end
  else
    refused[#refused + 1] = i
  end
end
return refused
"#;

const CREATE: &str = r#"
if KEYS[2] ~= '' then
  local other = redis.call('GET', KEYS[2])
  if other and other ~= ARGV[1] and redis.call('EXISTS', ARGV[6] .. other) == 1 then
    return other
  end
end
redis.call('HSET', KEYS[1], 'epoch', 1, 'snap', ARGV[2], 'owner', ARGV[3], 'tenant', ARGV[4], 'kidx', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[5]) end
return ''
"#;

/// Leaves a tombstone for the TTL, so that a replica still holding a copy
/// has its next write refused instead of storing the session again.
const DELETE: &str = r#"
local kx = redis.call('HGET', KEYS[1], 'kidx')
if kx and kx ~= '' and redis.call('GET', kx) == ARGV[1] then redis.call('DEL', kx) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'closed', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    /// The URL without its password, for logs and errors.
    label: String,
    replica: String,
    claim: Script,
    peek: Script,
    release: Script,
    save: Script,
    create: Script,
    delete: Script,
    up: AtomicBool,
}

/// One session a checkpoint writes.
pub struct SaveItem {
    pub id: String,
    pub epoch: u64,
    pub snapshot: Vec<u8>,
    /// Owner hash and client key: to store it again if Redis lost it.
    pub tenant: Vec<u8>,
    pub key: Option<String>,
}

/// What a create found.
pub enum Created {
    Created,
    /// The key already names another live session (opened meanwhile on
    /// another replica): take that one over instead.
    KeyTaken(String),
}

pub fn session_key(id: &str) -> String {
    format!("{SESSION}{id}")
}

fn key_index(tenant: &[u8], key: &str) -> String {
    format!("gru:k:{}:{key}", hex(tenant))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `url` without a password: `redis://user:***@host:port/db`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => {
            let user = &url[s + 3..at];
            let user = user.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl RedisStore {
    /// Connects lazily: an unreachable Redis at start is reported by the
    /// first checkpoint, not fatal (sessions are served from memory).
    pub fn new(url: &str, replica: String) -> Result<RedisStore, String> {
        if url.starts_with("rediss://") {
            // rediss:// uses the process's rustls provider: the ring one
            // tonic's TLS already builds. Set once; a second call is a no-op.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| e.to_string())?;
        Ok(RedisStore {
            client,
            conn,
            label: redact(url),
            replica,
            claim: Script::new(CLAIM),
            peek: Script::new(PEEK),
            release: Script::new(RELEASE),
            save: Script::new(SAVE),
            create: Script::new(CREATE),
            delete: Script::new(DELETE),
            up: AtomicBool::new(true),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Notes each call's outcome: a log line and the `up` gauge when Redis
    /// goes away or comes back, not one line per failed call.
    fn seen<T>(&self, r: redis::RedisResult<T>, op: &'static str) -> Result<T, String> {
        match r {
            Ok(v) => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    tracing::info!(store = %self.label, "session store reachable again");
                }
                metrics::gauge!("gru_session_store_up").set(1.0);
                Ok(v)
            }
            Err(e) => {
                metrics::counter!("gru_session_store_errors_total", "op" => op).increment(1);
                if self.up.swap(false, Ordering::AcqRel) {
                    tracing::warn!(store = %self.label, error = %e, "session store unreachable: serving sessions from memory, checkpoints wait");
                }
                metrics::gauge!("gru_session_store_up").set(0.0);
                Err(e.to_string())
            }
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Takes a session over: raises its epoch, names this replica its owner
    /// and returns (epoch, snapshot bytes); None when Redis does not hold
    /// it for this tenant.
    pub async fn claim(
        &self,
        id: &str,
        tenant: &[u8],
        ttl: Duration,
    ) -> Result<Option<(u64, Vec<u8>)>, String> {
        let mut c = self.conn.clone();
        let r = self
            .claim
            .key(session_key(id))
            .arg(&self.replica)
            .arg(hex(tenant))
            .arg(ttl.as_millis() as u64)
            .arg(id)
            .arg(TAKEOVERS)
            .invoke_async(&mut c)
            .await;
        self.seen(r, "claim")
    }

    /// The stored snapshot of `id` for this tenant, read without taking it
    /// over (None when Redis does not hold it for this tenant).
    pub async fn peek_snapshot(&self, id: &str, tenant: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<(Option<Vec<u8>>, Option<String>)> = redis::cmd("HMGET")
            .arg(session_key(id))
            .arg("snap")
            .arg("tenant")
            .query_async(&mut c)
            .await;
        self.seen(r, "peek").map(|(snap, stored_tenant)| {
            snap.filter(|_| stored_tenant.unwrap_or_default() == hex(tenant))
        })
    }

    /// The id a tenant's key names in Redis, if any.
    pub async fn lookup_key(&self, tenant: &[u8], key: &str) -> Result<Option<String>, String> {
        let mut c = self.conn.clone();
        let r = c.get(key_index(tenant, key)).await;
        self.seen(r, "lookup_key")
    }

    /// Stores a new session at epoch 1 (and its key, unless the key already
    /// names another live session).
    pub async fn create(
        &self,
        id: &str,
        tenant: &[u8],
        key: Option<&str>,
        snapshot: Vec<u8>,
        ttl: Duration,
    ) -> Result<Created, String> {
        let mut c = self.conn.clone();
        let kidx = key.map(|k| key_index(tenant, k)).unwrap_or_default();
        let r: redis::RedisResult<String> = self
            .create
            .key(session_key(id))
            .key(kidx)
            .arg(id)
            .arg(snapshot)
            .arg(&self.replica)
            .arg(hex(tenant))
            .arg(ttl.as_millis() as u64)
            .arg(SESSION)
            .invoke_async(&mut c)
            .await;
        let other = self.seen(r, "create")?;
        Ok(if other.is_empty() {
            Created::Created
        } else {
            Created::KeyTaken(other)
        })
    }

    /// Writes sessions whose epoch is still the stored one; returns the
    /// indices (into `items`) of those refused: another replica owns them
    /// now, or they were closed.
    /// `release`: written as owned by nobody (at shutdown, or handing over),
    /// so the next replica takes it without asking anyone.
    pub async fn save(
        &self,
        items: Vec<SaveItem>,
        ttl: Duration,
        release: bool,
    ) -> Result<Vec<usize>, String> {
        let owner = if release {
            String::new()
        } else {
            self.replica.clone()
        };
        // The batches go out together on the one multiplexed connection.
        let mut calls = tokio::task::JoinSet::new();
        let mut items = items;
        let mut n = 0;
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(BATCH));
            let chunk = std::mem::replace(&mut items, rest);
            let (script, replica, mut c) = (self.save.clone(), owner.clone(), self.conn.clone());
            calls.spawn(async move {
                let mut inv = script.prepare_invoke();
                inv.arg(replica).arg(ttl.as_millis() as u64).arg(SESSION);
                for it in chunk {
                    let kidx = it
                        .key
                        .map(|k| key_index(&it.tenant, &k))
                        .unwrap_or_default();
                    inv.key(session_key(&it.id))
                        .arg(it.epoch)
                        .arg(it.snapshot)
                        .arg(hex(&it.tenant))
                        .arg(kidx);
                }
                let r: redis::RedisResult<Vec<usize>> = inv.invoke_async(&mut c).await;
                r.map(|v| (n, v))
            });
            n += 1;
        }
        let mut refused = Vec::new();
        let mut failed = None;
        while let Some(r) = calls.join_next().await {
            let r = r.map_err(|e| format!("checkpoint task: {e}"))?;
            match self.seen(r, "save") {
                Ok((n, v)) => refused.extend(v.into_iter().map(|i| n * BATCH + i - 1)),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(refused),
        }
    }

    /// Deletes a closed session (and its key, if it still names it).
    pub async fn delete(&self, id: &str, ttl: Duration) -> Result<(), String> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<i64> = self
            .delete
            .key(session_key(id))
            .arg(id)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await;
        self.seen(r, "delete").map(|_| ())
    }

    /// Whether another replica, alive, owns session `id`.
    pub async fn owned_elsewhere(&self, id: &str) -> Result<bool, String> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<i64> = self
            .peek
            .key(session_key(id))
            .arg(&self.replica)
            .arg(ALIVE)
            .invoke_async(&mut c)
            .await;
        self.seen(r, "peek").map(|n| n == 1)
    }

    /// The replica that owns session `id` ("" for nobody; None: not stored).
    pub async fn owner(&self, id: &str) -> Result<Option<String>, String> {
        let mut c = self.conn.clone();
        let r = c.hget(session_key(id), "owner").await;
        self.seen(r, "owner")
    }

    /// Asks the owner of `id` to write it and let go.
    pub async fn request_handoff(&self, id: &str) -> Result<(), String> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<i64> =
            c.publish(HANDOFFS, format!("{id} {}", self.replica)).await;
        self.seen(r, "handoff").map(|_| ())
    }

    /// Lets go of `id` without writing it (this replica does not hold it).
    pub async fn release(&self, id: &str) -> Result<(), String> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<i64> = self
            .release
            .key(session_key(id))
            .arg(&self.replica)
            .invoke_async(&mut c)
            .await;
        self.seen(r, "release").map(|_| ())
    }

    /// Renews this replica's heartbeat (`gone`: removes it, at shutdown).
    pub async fn heartbeat(&self, gone: bool) -> Result<(), String> {
        let mut c = self.conn.clone();
        let key = format!("{ALIVE}{}", self.replica);
        let r: redis::RedisResult<()> = if gone {
            c.del(key).await
        } else {
            c.set_ex(key, 1, ALIVE_FOR.as_secs()).await
        };
        self.seen(r, "heartbeat")
    }

    /// Bytes Redis uses for one stored session (MEMORY USAGE), for the
    /// benchmarks' report.
    pub async fn memory_usage(&self, id: &str) -> Result<Option<u64>, String> {
        let mut c = self.conn.clone();
        let r = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(session_key(id))
            .query_async(&mut c)
            .await;
        self.seen(r, "memory_usage")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_a_log_line() {
        assert_eq!(redact("redis://:s3cret@r:6379/0"), "redis://:***@r:6379/0");
        assert_eq!(
            redact("rediss://app:s3cret@r:6380"),
            "rediss://app:***@r:6380"
        );
        assert_eq!(redact("redis://r:6379"), "redis://r:6379");
    }
}
