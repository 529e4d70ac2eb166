//! Data subjects' keys and erasure (SPEC §7, GDPR Art. 17): the server side of
//! `vellum_core::shred`.
//!
//! Each subject (`gdprContext.dataSubjectId`) gets a random 256-bit key and a random reference
//! on first sight. The store keeps the key wrapped under a key-encryption key derived from the
//! HMAC secret, found by a keyed hash of the subject id (the id itself is stored nowhere in
//! clear). Ingest seals the subject's values under the key; reads by auditors and admins add a
//! `decrypted` object; `POST /v1/subjects/{id}/erase` deletes the key, after which the values are
//! unreadable, a search by the id finds nothing, and verification is unchanged.

use crate::AppState;
use crate::api::{Auth, require_read};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::keys::Actor;
use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use vellum_core::FieldError;
use vellum_core::integrity::HmacKeyring;
use vellum_core::shred::{self, SubjectSecret};
use vellum_store::{AuditStore, StoreError};
use zeroize::Zeroizing;

/// Subjects' keys, with caches of unwrapped ones by lookup (ingest, search) and by reference
/// (reads of sealed events), both cleared for a subject on erasure and bounded in size.
pub struct SubjectKeys {
    store: Arc<dyn AuditStore>,
    kek: Zeroizing<[u8; 32]>,
    lookup_key: Zeroizing<Vec<u8>>,
    cache: RwLock<HashMap<String, Arc<SubjectSecret>>>,
    by_ref: RwLock<HashMap<String, Arc<SubjectSecret>>>,
    /// False when several nodes share the store (scale-out): a key erased through one node
    /// must not stay usable from another node's memory, so nothing is cached and every use
    /// reads the store (one primary-key lookup).
    caching: bool,
}

/// Unwrapped keys kept per cache before it starts over (~100 bytes each).
const CACHE_LIMIT: usize = 100_000;

fn remember(
    cache: &RwLock<HashMap<String, Arc<SubjectSecret>>>,
    id: String,
    secret: &Arc<SubjectSecret>,
) {
    let mut cache = cache.write();
    if cache.len() >= CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(id, secret.clone());
}

impl std::fmt::Debug for SubjectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKeys").finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Corrupt(format!("random generator: {e}")))?;
    Ok(bytes)
}

impl SubjectKeys {
    /// Keys kept in `store`, wrapped under a key derived from `keyring`. With `shared_store`
    /// (several nodes on one store), unwrapped keys are never cached.
    pub fn new(store: Arc<dyn AuditStore>, keyring: &HmacKeyring, shared_store: bool) -> Self {
        let derived = keyring.derive("subject-kek");
        let mut kek = Zeroizing::new([0u8; 32]);
        for (k, d) in kek.iter_mut().zip(derived.iter()) {
            *k = *d;
        }
        Self {
            store,
            kek,
            lookup_key: keyring.derive("subject-lookup"),
            cache: RwLock::new(HashMap::new()),
            by_ref: RwLock::new(HashMap::new()),
            caching: !shared_store,
        }
    }

    /// The store's name for a subject id: a keyed hash, so the id is not stored in clear.
    fn lookup(&self, subject_id: &str) -> String {
        use hmac::{KeyInit, Mac};
        let Ok(mut mac) = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.lookup_key)
        else {
            return String::new();
        };
        mac.update(subject_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The subject's key, creating it on first sight (blocking store I/O on a miss).
    pub fn get_or_create(&self, subject_id: &str) -> Result<Arc<SubjectSecret>, StoreError> {
        let lookup = self.lookup(subject_id);
        if let Some(secret) = self.cache.read().get(&lookup) {
            return Ok(secret.clone());
        }
        let (subject_ref, wrapped) = match self.store.subject_key(&lookup)? {
            Some(found) => found,
            None => {
                let secret = SubjectSecret {
                    key: Zeroizing::new(random::<32>()?),
                    subject_ref: hex::encode(random::<16>()?),
                };
                let wrapped = shred::wrap_key(&self.kek, &secret, &random::<24>()?);
                self.store
                    .insert_subject_key(&lookup, &secret.subject_ref, &wrapped)?
            }
        };
        let secret = Arc::new(
            shred::unwrap_key(&self.kek, &subject_ref, &wrapped)
                .map_err(|e| StoreError::Corrupt(format!("subject key: {e}")))?,
        );
        if self.caching {
            remember(&self.cache, lookup, &secret);
        }
        Ok(secret)
    }

    /// The subject's key if it exists (never creates one).
    pub fn find(&self, subject_id: &str) -> Result<Option<Arc<SubjectSecret>>, StoreError> {
        let lookup = self.lookup(subject_id);
        if let Some(secret) = self.cache.read().get(&lookup) {
            return Ok(Some(secret.clone()));
        }
        let Some((subject_ref, wrapped)) = self.store.subject_key(&lookup)? else {
            return Ok(None);
        };
        let secret = shred::unwrap_key(&self.kek, &subject_ref, &wrapped)
            .map_err(|e| StoreError::Corrupt(format!("subject key: {e}")))?;
        Ok(Some(Arc::new(secret)))
    }

    /// The key of a stored sealed object's subject, if not erased.
    pub fn by_ref(&self, subject_ref: &str) -> Result<Option<Arc<SubjectSecret>>, StoreError> {
        if let Some(secret) = self.by_ref.read().get(subject_ref) {
            return Ok(Some(secret.clone()));
        }
        let Some(wrapped) = self.store.subject_key_by_ref(subject_ref)? else {
            return Ok(None);
        };
        let secret = Arc::new(
            shred::unwrap_key(&self.kek, subject_ref, &wrapped)
                .map_err(|e| StoreError::Corrupt(format!("subject key: {e}")))?,
        );
        if self.caching {
            remember(&self.by_ref, subject_ref.to_owned(), &secret);
        }
        Ok(Some(secret))
    }

    /// Destroys the subject's key; `audit` commits with the deletion. Returns its reference.
    pub fn erase(&self, subject_id: &str, audit: &[String]) -> Result<Option<String>, StoreError> {
        let lookup = self.lookup(subject_id);
        self.cache.write().remove(&lookup);
        let erased = self.store.erase_subject_key(&lookup, audit)?;
        if let Some(subject_ref) = &erased {
            self.by_ref.write().remove(subject_ref);
        }
        Ok(erased)
    }
}

/// Seals the subject's values of one prepared event (the pipeline's last step before
/// canonicalization). Store I/O only on the first event of a subject.
pub fn sealer<'a>(
    keys: &'a SubjectKeys,
    pointers: &'a [String],
) -> impl FnMut(&mut serde_json::Map<String, Value>) -> Result<(), FieldError> + 'a {
    move |map| {
        let Some(subject) = shred::subject_of(map).map(str::to_owned) else {
            return Ok(());
        };
        let secret = tokio::task::block_in_place(|| keys.get_or_create(&subject)).map_err(|e| {
            FieldError::new(
                "/gdprContext/dataSubjectId",
                format!("subject key unavailable: {e}"),
            )
        })?;
        let nonce = random::<24>()
            .map_err(|e| FieldError::new("/gdprContext/dataSubjectId", e.to_string()))?;
        shred::seal(map, pointers, &secret, &nonce)
            .map(|_| ())
            .map_err(|e| FieldError::new("/gdprContext/dataSubjectId", e.to_string()))
    }
}

/// Whether this caller may see a sealed event's plaintext.
pub fn may_decrypt(principal: &Principal) -> bool {
    principal.role.allows(Role::Auditor)
}

/// The API JSON of a stored event, with a `decrypted` object when the event is sealed and the
/// caller may see it: the plaintext values by pointer, or `{"erased": true}` once the subject's
/// key is gone. `decrypted` is outside the hashed form (SPEC §3).
pub fn with_decrypted(api_json: String, canonical: &str, keys: &SubjectKeys) -> String {
    if !canonical.contains("\"sealed\":") {
        return api_json;
    }
    let Some(sealed) = serde_json::from_str::<Value>(canonical)
        .ok()
        .and_then(|v| v.get(shred::SEALED_FIELD).cloned())
    else {
        return api_json;
    };
    let decrypted = match shred::sealed_subject(&sealed).map(|r| keys.by_ref(r)) {
        Some(Ok(Some(secret))) => match shred::open(&sealed, &secret.key) {
            Ok(values) => Value::Object(values),
            Err(e) => json!({"error": e.to_string()}),
        },
        Some(Ok(None)) => json!({"erased": true}),
        Some(Err(e)) => json!({"error": e.to_string()}),
        None => return api_json,
    };
    let Some(body) = api_json.strip_suffix('}') else {
        return api_json;
    };
    format!("{body},\"decrypted\":{decrypted}}}")
}

/// Replaces a `dataSubjectId` filter by the subject's search tag (what the index holds); a
/// subject without a key (never seen, or erased) matches nothing.
pub fn translate_filter(
    keys: &SubjectKeys,
    query: &mut vellum_store::SearchQuery,
) -> Result<(), StoreError> {
    if let Some(subject) = query.data_subject_id.take() {
        query.data_subject_id = Some(match keys.find(&subject)? {
            Some(secret) => shred::subject_tag(&secret.key, &subject),
            // No tag can equal this (tags are 32 hex digits).
            None => "erased-or-unknown".to_owned(),
        });
    }
    Ok(())
}

/// Query parameters as recorded in `audit.read`: a data subject id is personal data, so it is
/// recorded as sealed, never in clear.
pub fn scrub_params(params: &std::collections::BTreeMap<String, String>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, value) in params {
        let recorded = if name == "dataSubjectId" {
            Value::String("[sealed]".into())
        } else {
            Value::String(value.clone())
        };
        out.insert(name.clone(), recorded);
    }
    Value::Object(out)
}

/// `POST /v1/subjects/{id}/erase` (admin): crypto-shreds a data subject.
#[utoipa::path(
    post, path = "/v1/subjects/{id}/erase", tag = "admin",
    params(("id" = String, Path, description = "gdprContext.dataSubjectId")),
    responses((status = 200, description = "{subjectRef, erasedAt}"), (status = 404), (status = 403)),
    security(("bearer" = []))
)]
pub async fn erase_subject(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(subject_id): Path<String>,
) -> Result<Response, ApiError> {
    require_read(
        &state,
        &principal,
        peer,
        "/v1/subjects/{id}/erase",
        Role::Admin,
    )
    .await?;
    if principal.organization_id.is_some() {
        return Err(ApiError::forbidden(
            "erasure removes a subject from every organization; use an admin key not bound to one",
        ));
    }
    if subject_id.is_empty() || subject_id.len() > 256 {
        return Err(ApiError::bad_request("id", "must be 1-256 characters"));
    }
    let actor = Actor::http(&principal, peer, "/v1/subjects/{id}/erase");
    let erased_at = vellum_core::time_fmt::format_server_time(time::OffsetDateTime::now_utc());
    let keys = state.subjects.clone();
    let subject_ref = {
        let keys = keys.clone();
        let subject = subject_id.clone();
        let state_for_event = (actor.clone(), erased_at.clone());
        tokio::task::spawn_blocking(move || {
            // The event names the subject only by its reference, which nothing links back
            // to the id once the key is gone.
            let subject_ref = match keys.find(&subject)? {
                Some(secret) => secret.subject_ref.clone(),
                None => return Ok(None),
            };
            let (actor, erased_at) = state_for_event;
            let mut event = crate::retention::admin_event("gdpr.erasure", &actor, "DataSubject", &subject_ref);
            event["details"] = json!({"subjectRef": subject_ref, "erasedAt": erased_at, "method": "crypto-shredding"});
            keys.erase(&subject, &[event.to_string()])
        })
        .await
        .map_err(|e| ApiError::internal(&e))??
    };
    let Some(subject_ref) = subject_ref else {
        return Err(ApiError::not_found(
            "no key for this data subject: never recorded, or already erased",
        ));
    };
    crate::outbox::settle(&state).await;
    Ok(Json(json!({"subjectRef": subject_ref, "erasedAt": erased_at})).into_response())
}
