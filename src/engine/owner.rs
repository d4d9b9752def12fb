//! Who a session belongs to: a tenant (by name where it was opened here, by
//! its SHA-256 where it was read back from a store), or nobody.

/// SHA-256 of a tenant's name: how a stored session names its owner (the
/// stores never hold tenant names, and never tokens).
pub fn owner_hash(tenant: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, tenant.as_bytes())
        .as_ref()
        .to_vec()
}

/// The tenant a session belongs to. Sessions opened here know the name;
/// sessions read back from a store know only its hash.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// Opened without authentication.
    Nobody,
    Tenant(String),
    Hashed(Vec<u8>),
}

impl Owner {
    pub fn of(tenant: Option<String>) -> Owner {
        tenant.map_or(Owner::Nobody, Owner::Tenant)
    }

    pub fn from_hash(hash: Vec<u8>) -> Owner {
        if hash.is_empty() {
            Owner::Nobody
        } else {
            Owner::Hashed(hash)
        }
    }

    /// Whether `caller` (a tenant name, None without auth) owns it.
    pub fn matches(&self, caller: Option<&str>) -> bool {
        match (self, caller) {
            (Owner::Nobody, None) => true,
            (Owner::Tenant(t), Some(c)) => t == c,
            (Owner::Hashed(h), Some(c)) => *h == owner_hash(c),
            _ => false,
        }
    }

    /// Its stored form: empty for nobody.
    pub fn hash(&self) -> Vec<u8> {
        match self {
            Owner::Nobody => Vec::new(),
            Owner::Tenant(t) => owner_hash(t),
            Owner::Hashed(h) => h.clone(),
        }
    }
}
