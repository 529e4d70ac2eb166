//! Console sessions: the cookie carries only a random id; everything else stays here.
//!
//! A session holds the principal its API key authenticated as, the SHA-256 of that key (never
//! the key: it is hashed and zeroized at sign-in), and its CSRF token. Every request
//! re-authenticates the hash through [`crate::auth::Authenticator`] (5 s cache), so revoking
//! the key ends its sessions. Sessions end after 30 minutes without a request or 12 hours
//! after sign-in, whichever comes first, and at sign-out. The table is keyed by SHA-256 of the
//! id, so the lookup's timing says nothing about the ids it holds.

use crate::auth::Principal;
use base64::Engine;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// A session ends after this long without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, however busy.
pub const ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most; sign-in is refused beyond (after dropping expired ones), so a flood
/// of sign-ins with a valid key cannot grow memory without bound.
pub const MAX_SESSIONS: usize = 10_000;

/// Name of the session cookie.
pub const COOKIE: &str = "vellum_session";

/// What a request learns from its session.
#[derive(Clone)]
pub struct SessionView {
    /// The principal the key authenticated as at sign-in.
    pub principal: Principal,
    /// SHA-256 of the key, to re-authenticate it on every request.
    pub key_hash: Zeroizing<[u8; 32]>,
    /// The session's CSRF token.
    pub csrf: String,
}

struct Session {
    view: SessionView,
    created: Instant,
    last_seen: Instant,
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// The table is full of live sessions.
    #[error("too many console sessions are open; try again later")]
    Full,
    /// The system's random source failed.
    #[error("no randomness for a session id")]
    Random,
}

/// The server's console sessions (in memory: a restart signs everyone out).
#[derive(Default)]
pub struct SessionStore {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

/// A random 256-bit token, base64url (session ids and CSRF tokens).
pub fn random_token() -> Result<String, SessionError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(raw.as_mut()).map_err(|_| SessionError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref()))
}

fn slot(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn expired(session: &Session, now: Instant) -> bool {
    now.saturating_duration_since(session.last_seen) >= IDLE_TIMEOUT
        || now.saturating_duration_since(session.created) >= ABSOLUTE_TIMEOUT
}

impl SessionStore {
    /// Opens a session for `principal` at `now`; returns its id (for the cookie) and its view.
    pub fn create(
        &self,
        principal: Principal,
        key_hash: [u8; 32],
        now: Instant,
    ) -> Result<(String, SessionView), SessionError> {
        let id = random_token()?;
        let view = SessionView {
            principal,
            key_hash: Zeroizing::new(key_hash),
            csrf: random_token()?,
        };
        let mut sessions = self.sessions.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| !expired(s, now));
            if sessions.len() >= MAX_SESSIONS {
                return Err(SessionError::Full);
            }
        }
        sessions.insert(
            slot(&id),
            Session {
                view: view.clone(),
                created: now,
                last_seen: now,
            },
        );
        Ok((id, view))
    }

    /// The live session `id` at `now`, marking it used; an expired one is dropped.
    pub fn touch(&self, id: &str, now: Instant) -> Option<SessionView> {
        let key = slot(id);
        let mut sessions = self.sessions.lock();
        let session = sessions.get_mut(&key)?;
        if expired(session, now) {
            sessions.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.view.clone())
    }

    /// Ends session `id` (sign-out, or its key no longer authenticates).
    pub fn remove(&self, id: &str) {
        self.sessions.lock().remove(&slot(id));
    }

    /// Drops every expired session (periodic upkeep).
    pub fn forget_expired(&self, now: Instant) {
        self.sessions.lock().retain(|_, s| !expired(s, now));
    }

    /// Sessions held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `Set-Cookie` value that stores session `id`: HttpOnly (no script reads it),
/// SameSite=Strict (no other site's page sends it), Path=/, Secure when served over TLS, and a
/// lifetime no longer than the session's absolute limit.
pub fn session_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ABSOLUTE_TIMEOUT.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that deletes a cookie `name` (sign-out, expired session).
pub fn clear_cookie(name: &str, secure: bool) -> String {
    format!(
        "{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn principal() -> Principal {
        Principal {
            key_id: "key_test".into(),
            role: Role::Reader,
            organization_id: Some("org-a".into()),
        }
    }

    #[test]
    fn idle_sessions_expire_after_thirty_minutes() {
        let store = SessionStore::default();
        let t0 = Instant::now();
        let (id, _) = store.create(principal(), [7; 32], t0).expect("session");
        // Used at 29 minutes: still alive, and the idle clock restarts.
        let at29 = t0 + Duration::from_secs(29 * 60);
        assert!(store.touch(&id, at29).is_some());
        assert!(
            store
                .touch(&id, at29 + Duration::from_secs(29 * 60))
                .is_some()
        );
        // Then 30 minutes of silence ends it, and it stays ended.
        let idle = at29 + Duration::from_secs(29 * 60) + IDLE_TIMEOUT;
        assert!(store.touch(&id, idle).is_none());
        assert!(
            store.touch(&id, at29).is_none(),
            "an expired session is dropped"
        );
        assert!(store.is_empty());
    }

    #[test]
    fn busy_sessions_still_end_after_twelve_hours() {
        let store = SessionStore::default();
        let t0 = Instant::now();
        let (id, _) = store.create(principal(), [7; 32], t0).expect("session");
        let mut now = t0;
        while now < t0 + ABSOLUTE_TIMEOUT - Duration::from_secs(600) {
            now += Duration::from_secs(600);
            assert!(store.touch(&id, now).is_some(), "alive at {:?}", now - t0);
        }
        assert!(store.touch(&id, t0 + ABSOLUTE_TIMEOUT).is_none());
    }

    #[test]
    fn sessions_are_distinct_and_removable() {
        let store = SessionStore::default();
        let now = Instant::now();
        let (a, va) = store.create(principal(), [1; 32], now).expect("a");
        let (b, vb) = store.create(principal(), [2; 32], now).expect("b");
        assert_ne!(a, b);
        assert_ne!(va.csrf, vb.csrf);
        assert_eq!(a.len(), 43, "256 bits, base64url");
        assert!(store.touch("not-a-session", now).is_none());
        store.remove(&a);
        assert!(store.touch(&a, now).is_none());
        assert_eq!(*store.touch(&b, now).expect("b lives").key_hash, [2; 32]);
    }

    #[test]
    fn cookie_flags() {
        let plain = session_cookie("abc", false);
        assert!(plain.starts_with("vellum_session=abc; "));
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(plain.contains(flag), "{plain} lacks {flag}");
        }
        assert!(!plain.contains("Secure"));
        assert!(session_cookie("abc", true).ends_with("; Secure"));
        let cleared = clear_cookie(COOKIE, true);
        assert!(cleared.contains("Max-Age=0") && cleared.contains("Secure"));
    }

    #[test]
    fn cookie_parsing_finds_the_named_cookie_only() {
        let mut headers = axum::http::HeaderMap::new();
        headers.append(
            axum::http::header::COOKIE,
            axum::http::HeaderValue::from_static("a=1; vellum_session_x=no; vellum_session=yes"),
        );
        assert_eq!(cookie_value(&headers, COOKIE), Some("yes"));
        assert_eq!(cookie_value(&headers, "b"), None);
    }
}
