//! Bearer-key authentication and role checks (SPEC §6).
//!
//! A key is `vlm_` + 43 base64url characters (32 random bytes). Only SHA-256 of the key text is
//! stored: keys carry 256 bits of entropy, so a fast hash is as strong as a slow one here and
//! keeps every request cheap. The lookup is by hash; the final comparison of the stored hash
//! is constant-time. Each route states the role it needs; `admin` includes every other role.

use crate::error::ApiError;
use base64::Engine;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use vellum_store::{ApiKeyRecord, AuditStore};
use zeroize::Zeroizing;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Write events only.
    Ingest,
    /// Search its own organization.
    Reader,
    /// Search, export, reports, verify.
    Auditor,
    /// Everything.
    Admin,
}

impl Role {
    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ingest" => Some(Self::Ingest),
            "reader" => Some(Self::Reader),
            "auditor" => Some(Self::Auditor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Reader => "reader",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }

    /// Whether this role may use a route that needs `required`.
    pub fn allows(self, required: Role) -> bool {
        match self {
            Self::Admin => true,
            Self::Auditor => matches!(required, Self::Auditor | Self::Reader),
            Self::Reader => required == Self::Reader,
            Self::Ingest => required == Self::Ingest,
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's public id; audit events of this caller name it as `principalId`.
    pub key_id: String,
    /// Its role.
    pub role: Role,
    /// The only organization it may see, if bound.
    pub organization_id: Option<String>,
}

impl Principal {
    /// Fails with 403 unless the role allows `required`.
    pub fn require(&self, required: Role) -> Result<(), ApiError> {
        if self.role.allows(required) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this route needs the {} role; the key has {}",
                required.as_str(),
                self.role.as_str()
            )))
        }
    }
}

/// A freshly generated key: the secret text (shown once) and its hash.
pub struct GeneratedKey {
    /// `vlm_…`, to hand to the user once.
    pub secret: Zeroizing<String>,
    /// SHA-256 of `secret`, the only thing stored.
    pub hash: [u8; 32],
}

/// Generates a new random API key.
pub fn generate_key() -> Result<GeneratedKey, getrandom::Error> {
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(raw.as_mut())?;
    let secret = Zeroizing::new(format!(
        "vlm_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    ));
    let hash = hash_key(&secret);
    Ok(GeneratedKey { secret, hash })
}

/// SHA-256 of a key's text.
pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A short public id for a new key.
pub fn new_key_id() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("key_{}", &id[id.len() - 12..])
}

/// How long a looked-up key is trusted before it is read again (so revocation takes effect
/// within this time even on another node).
const CACHE_TTL: Duration = Duration::from_secs(5);

/// Principals by key hash, with the time each was looked up.
type KeyCache = HashMap<[u8; 32], (Principal, Instant)>;

/// Authenticates bearer keys against the store, with a short positive cache.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn AuditStore>,
    cache: Arc<RwLock<KeyCache>>,
}

impl Authenticator {
    /// Authenticates against `store`.
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        Self {
            store,
            cache: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// Forgets cached keys (after a revocation on this node).
    pub fn invalidate(&self) {
        self.cache.write().clear();
    }

    /// Parses an `Authorization` header value into the hash of its bearer key (401 when
    /// missing or malformed).
    pub fn bearer_hash(header: Option<&str>) -> Result<[u8; 32], ApiError> {
        let header = header.ok_or_else(|| {
            ApiError::unauthorized(
                "missing Authorization header; send `Authorization: Bearer <api key>`",
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <api key>`")
            })?;
        Ok(hash_key(token))
    }

    /// The principal for a key hash if it was looked up recently (no I/O).
    pub fn cached(&self, hash: &[u8; 32]) -> Option<Principal> {
        self.cache
            .read()
            .get(hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(principal, _)| principal.clone())
    }

    /// Looks a key hash up in the store (blocking I/O) and caches a valid result.
    pub fn lookup(&self, hash: &[u8; 32]) -> Result<Principal, ApiError> {
        let record = self
            .store
            .find_api_key(hash)
            // An unreachable store is 503 with Retry-After (the client retries), not a 500.
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
        let principal = principal_of(&record, hash)?;
        let mut cache = self.cache.write();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(*hash, (principal.clone(), Instant::now()));
        Ok(principal)
    }

    /// Resolves an `Authorization` header value to a principal, or 401 (blocking on a cache
    /// miss).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let hash = Self::bearer_hash(header)?;
        match self.cached(&hash) {
            Some(principal) => Ok(principal),
            None => self.lookup(&hash),
        }
    }
}

fn principal_of(record: &ApiKeyRecord, presented_hash: &[u8; 32]) -> Result<Principal, ApiError> {
    if !bool::from(record.key_hash.ct_eq(presented_hash)) {
        return Err(ApiError::unauthorized("unknown API key"));
    }
    if record.revoked_at.is_some() {
        return Err(ApiError::unauthorized("this API key has been revoked"));
    }
    let role = Role::parse(&record.role)
        .ok_or_else(|| ApiError::internal(&format!("stored key {} has unknown role", record.id)))?;
    Ok(Principal {
        key_id: record.id.clone(),
        role,
        organization_id: record.organization_id.clone(),
    })
}

/// Per-key request budgets (`rate_limit_per_second`, `rate_limit_burst`): a GCRA limiter
/// per key id, so one noisy client cannot starve the others. Only authenticated keys reach it,
/// so its memory is bounded by the number of keys.
pub struct RateLimiter {
    limiter: governor::DefaultKeyedRateLimiter<String>,
}

impl RateLimiter {
    /// A limiter of `per_second` requests per key with bursts of `burst`; `None` when
    /// `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = std::num::NonZeroU32::new(per_second)?;
        let burst = std::num::NonZeroU32::new(burst).unwrap_or(rate);
        let quota = governor::Quota::per_second(rate).allow_burst(burst);
        Some(Self {
            limiter: governor::RateLimiter::keyed(quota),
        })
    }

    /// Spends one request of `key_id`'s budget, or says how long to wait (429).
    pub fn check(&self, key_id: &str) -> Result<(), ApiError> {
        use governor::clock::Clock;
        match self.limiter.check_key(&key_id.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                metrics::counter!("vellum_rate_limited_total").increment(1);
                Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u32))
            }
        }
    }

    /// Forgets keys whose budget is full again (periodic upkeep).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_allows_everything_and_roles_are_separate() {
        for r in [Role::Ingest, Role::Reader, Role::Auditor, Role::Admin] {
            assert!(Role::Admin.allows(r));
        }
        assert!(Role::Auditor.allows(Role::Reader));
        assert!(!Role::Auditor.allows(Role::Ingest));
        assert!(!Role::Reader.allows(Role::Auditor));
        assert!(!Role::Ingest.allows(Role::Reader));
        assert_eq!(Role::parse("auditor"), Some(Role::Auditor));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn generated_keys_are_distinct_and_hash_to_their_hash() {
        let a = generate_key().expect("rng");
        let b = generate_key().expect("rng");
        assert_ne!(*a.secret, *b.secret);
        assert!(a.secret.starts_with("vlm_"));
        assert_eq!(a.secret.len(), 4 + 43);
        assert_eq!(hash_key(&a.secret), a.hash);
    }
}
