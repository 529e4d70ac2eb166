//! The web console (SPEC §5, issue 9): server-rendered pages at `/` and `/console/…`, served by
//! the same binary as the API.
//!
//! - **Sign-in** with an API key ([`signin`]); the key is hashed, authenticated with
//!   [`crate::auth::Authenticator`] and zeroized; a session ([`session`]) keeps the principal
//!   and the key's hash, and the browser only a random session id in an HttpOnly,
//!   SameSite=Strict cookie (Secure under TLS). Forms carry a per-session CSRF token
//!   ([`csrf`]).
//! - **Pages**: dashboard ([`dashboard`], with a background verification run and the count of
//!   open alerts), search and saved searches ([`search`]), event detail with a live
//!   verification badge ([`event`]), security alerts and their acknowledgement ([`alerts`]),
//!   reports, disclosures and exports ([`reports`]), and for admins API keys, retention and
//!   legal holds ([`admin`]).
//! - **The same rules as the API**: every page reuses the JSON routes' functions, so roles,
//!   organization scoping and audit events are the API's. Every read of the audit log through
//!   the console is itself recorded (`audit.read` naming a `/console/…` endpoint) before the
//!   page is sent; a read that cannot be recorded is refused.
//! - **Hardening**: a strict Content-Security-Policy (no inline script or style), nosniff,
//!   no referrer, no caching of pages, every value HTML-escaped by askama. Script and style
//!   are vendored into the binary ([`assets`]) under content-hashed URLs; no CDN.

pub mod admin;
pub mod alerts;
pub mod assets;
pub mod charts;
pub mod csrf;
pub mod dashboard;
pub mod event;
pub mod reports;
pub mod search;
pub mod session;
pub mod signin;

use crate::AppState;
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// The Content-Security-Policy of every console response: only this origin's script and
/// style files (no inline code or style attributes), images from this origin or `data:`, forms
/// posting only here, never framed, no `<base>` rewriting; the script may fetch from this
/// origin only (`connect-src 'self'`: the verification progress it polls; without it
/// `default-src 'none'` blocks that request).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Sign-in attempts allowed per client IP per minute (a burst of this many, refilled evenly).
pub const SIGNIN_PER_MINUTE: u32 = 10;

/// The console's own state: sessions, the sign-in limiter, the verification run. Held in a
/// request extension the console router adds, so the API's `AppState` needs no new field.
#[derive(Clone)]
pub struct ConsoleState(Arc<ConsoleInner>);

/// The parts of [`ConsoleState`].
pub struct ConsoleInner {
    /// Live sessions.
    pub sessions: session::SessionStore,
    /// Sign-in attempts per client IP.
    signin_limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// The background verification, if one ran since start.
    pub verify: parking_lot::Mutex<Option<dashboard::VerifyJob>>,
}

impl Default for ConsoleState {
    fn default() -> Self {
        let per_minute =
            std::num::NonZeroU32::new(SIGNIN_PER_MINUTE).unwrap_or(std::num::NonZeroU32::MIN);
        Self(Arc::new(ConsoleInner {
            sessions: session::SessionStore::default(),
            signin_limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute)),
            verify: parking_lot::Mutex::new(None),
        }))
    }
}

impl ConsoleState {
    /// The shared parts.
    pub fn inner(&self) -> &ConsoleInner {
        &self.0
    }

    /// Spends one sign-in attempt of `ip`; the seconds to wait when it has none left.
    pub fn signin_allowed(&self, ip: IpAddr) -> Result<(), u64> {
        use governor::clock::Clock;
        match self.0.signin_limiter.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(not_until
                .wait_time_from(governor::clock::DefaultClock::default().now())
                .as_secs()
                .max(1)),
        }
    }

    /// Forgets idle limiter entries and expired sessions.
    pub fn sweep(&self) {
        self.0.signin_limiter.retain_recent();
        self.0.sessions.forget_expired(Instant::now());
    }
}

/// The console's routes, merged into [`crate::router`].
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(signin::root))
        .route(
            "/console/signin",
            get(signin::signin_page).post(signin::signin),
        )
        .route("/console/signout", post(signin::signout))
        .route("/console/static/{file}", get(assets::serve))
        .route("/console/dashboard", get(dashboard::page))
        .route("/console/verify", post(dashboard::start_verify))
        .route("/console/verify/status", get(dashboard::status))
        .route("/console/search", get(search::page))
        .route("/console/search/save", post(search::save))
        .route("/console/search/delete", post(search::delete))
        .route("/console/events/{id}", get(event::page))
        .route("/console/alerts", get(alerts::page))
        .route("/console/alerts/acknowledge", post(alerts::acknowledge))
        .route("/console/export", get(reports::export))
        .route(
            "/console/reports",
            get(reports::page).post(reports::generate),
        )
        .route("/console/reports/disclosures", get(reports::disclosures))
        .route(
            "/console/keys",
            get(admin::keys_page).post(admin::create_key),
        )
        .route("/console/keys/revoke", post(admin::revoke_key))
        .route("/console/retention", get(admin::retention_page))
        .route("/console/retention/policies", post(admin::save_policies))
        .route("/console/retention/apply", post(admin::apply_retention))
        .route("/console/holds", post(admin::create_hold))
        .route("/console/holds/release", post(admin::release_hold))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::Extension(ConsoleState::default()))
}

/// Adds the console's security headers to a response; pages (anything not already given a
/// cache policy, i.e. all but the static files) are never cached.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// An error shown as an HTML page (the API's message, status and `Retry-After`).
#[derive(Debug)]
pub struct ConsoleError {
    /// HTTP status.
    pub status: StatusCode,
    /// One sentence for the user.
    pub message: String,
    /// Seconds to wait (429/503).
    pub retry_after: Option<u32>,
}

impl ConsoleError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: a form value is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 500; the cause is logged, not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        ApiError::internal(cause).into()
    }
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        let mut message = e.message;
        // The API names the parameter in `details`; the message already says it for 400s.
        if e.details.len() > 1 {
            for d in &e.details {
                message.push_str(&format!("; {d}"));
            }
        }
        Self {
            status: e.status,
            message,
            retry_after: e.retry_after,
        }
    }
}

/// The error page.
#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
    css: &'a str,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or("Error"),
            message: &self.message,
            css: assets::CSS.url(),
        };
        let body = page
            .render()
            .unwrap_or_else(|_| "<!doctype html><title>Error</title>Error".to_owned());
        let mut response = (self.status, Html(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Renders a page.
pub fn render(page: &impl Template) -> Result<Response, ConsoleError> {
    page.render()
        .map(|html| Html(html).into_response())
        .map_err(|e| ConsoleError::internal(&e))
}

/// What the page frame (header, navigation, sign-out form) shows.
pub struct Nav {
    /// The signed-in key's id.
    pub key_id: String,
    /// Its role.
    pub role: &'static str,
    /// Its organization, if bound.
    pub org: Option<String>,
    /// The session's CSRF token (for the sign-out form and every other form).
    pub csrf: String,
    /// Whether auditor pages are offered.
    pub auditor: bool,
    /// Whether admin pages are offered.
    pub admin: bool,
    /// The current section, highlighted in the navigation.
    pub active: &'static str,
    /// Stylesheet URL.
    pub css: &'static str,
    /// Script URL.
    pub js: &'static str,
}

/// A signed-in request: the session's principal (re-authenticated), its CSRF token and the
/// client's address. Without a live session, GETs are sent to the sign-in page.
pub struct Signed {
    /// Who is signed in.
    pub principal: Principal,
    /// The session's CSRF token.
    pub csrf: String,
    /// The client (for audit events).
    pub peer: SocketAddr,
    /// Whether the server speaks TLS (origin checks, cookie flags).
    pub tls: bool,
    /// The console's state.
    pub console: ConsoleState,
    /// The session id (for sign-out).
    pub session_id: String,
}

impl Signed {
    /// The frame of a page in section `active`.
    pub fn nav(&self, active: &'static str) -> Nav {
        Nav {
            key_id: self.principal.key_id.clone(),
            role: self.principal.role.as_str(),
            org: self.principal.organization_id.clone(),
            csrf: self.csrf.clone(),
            auditor: self.principal.role.allows(Role::Auditor),
            admin: self.principal.role.allows(Role::Admin),
            active,
            css: assets::CSS.url(),
            js: assets::JS.url(),
        }
    }

    /// Refuses a form post this session may not make: from another origin, without this
    /// session's token, or needing a role the key lacks (that refusal is audited, like any
    /// refused read: [`crate::api::require_read`]).
    pub async fn authorize_form(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        form: &Form,
        endpoint: &str,
        role: crate::auth::Role,
    ) -> Result<(), ConsoleError> {
        self.check_form(headers, form)?;
        self.authorize_read(state, endpoint, role).await
    }

    /// Refuses a page this session's key may not read (`role`, organization scope), and audits
    /// the read (or the refusal) as `endpoint`, as every API read is
    /// ([`crate::api::require_read`]).
    pub async fn authorize_read(
        &self,
        state: &AppState,
        endpoint: &str,
        role: crate::auth::Role,
    ) -> Result<(), ConsoleError> {
        crate::api::require_read(state, &self.principal, self.peer, endpoint, role).await?;
        Ok(())
    }

    /// Refuses a form that came from another origin or lacks this session's token.
    pub fn check_form(&self, headers: &HeaderMap, form: &Form) -> Result<(), ConsoleError> {
        if !csrf::same_origin(headers, self.tls) {
            metrics::counter!("vellum_console_csrf_rejected_total").increment(1);
            return Err(ConsoleError::new(
                StatusCode::FORBIDDEN,
                "this form was sent from another site; it was refused",
            ));
        }
        if !csrf::tokens_match(&self.csrf, form.get(csrf::FIELD)) {
            metrics::counter!("vellum_console_csrf_rejected_total").increment(1);
            return Err(ConsoleError::new(
                StatusCode::FORBIDDEN,
                "this form's security token is missing or stale; reload the page and try again",
            ));
        }
        Ok(())
    }
}

/// Where a request without a live session goes.
fn to_signin(clear: bool, tls: bool) -> Response {
    let mut response = Redirect::to("/console/signin").into_response();
    if clear && let Ok(v) = HeaderValue::from_str(&session::clear_cookie(session::COOKIE, tls)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The console's state from a request's extensions.
pub fn console_state(parts: &Parts) -> Result<ConsoleState, ConsoleError> {
    parts
        .extensions
        .get::<ConsoleState>()
        .cloned()
        .ok_or_else(|| ConsoleError::internal(&"console state missing"))
}

/// The client's address from a request's extensions.
pub fn peer_of(parts: &Parts) -> Result<SocketAddr, ConsoleError> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .ok_or_else(|| ConsoleError::internal(&"no peer address"))
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let console = console_state(parts).map_err(IntoResponse::into_response)?;
        let peer = peer_of(parts).map_err(IntoResponse::into_response)?;
        let tls = state.config.tls_files().ok().flatten().is_some();
        let Some(id) = session::cookie_value(&parts.headers, session::COOKIE).map(str::to_owned)
        else {
            return Err(to_signin(false, tls));
        };
        let Some(view) = console.inner().sessions.touch(&id, Instant::now()) else {
            return Err(to_signin(true, tls));
        };
        // The key is checked again on every request (5 s cache): a revoked key's sessions end.
        let hash = *view.key_hash;
        let current = match state.auth.cached(&hash) {
            Some(p) => Ok(p),
            None => {
                let auth = state.auth.clone();
                tokio::task::spawn_blocking(move || auth.lookup(&hash))
                    .await
                    .map_err(|e| ConsoleError::internal(&e).into_response())?
            }
        };
        let principal = match current {
            Ok(p) if p == view.principal => p,
            Ok(_) => {
                console.inner().sessions.remove(&id);
                return Err(to_signin(true, tls));
            }
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                console.inner().sessions.remove(&id);
                return Err(to_signin(true, tls));
            }
            Err(e) => return Err(ConsoleError::from(e).into_response()),
        };
        if let Some(limiter) = &state.rate_limiter {
            limiter
                .check(&principal.key_id)
                .map_err(|e| ConsoleError::from(e).into_response())?;
        }
        Ok(Signed {
            principal,
            csrf: view.csrf,
            peer,
            tls,
            console,
            session_id: id,
        })
    }
}

/// A submitted form (or query string) as name/value pairs; blank values count as absent.
#[derive(Debug, Default, Clone)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    /// The first non-blank value of `name`, trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .find(|v| !v.is_empty())
    }

    /// [`Form::get`] as an owned string.
    pub fn owned(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Form {
    type Rejection = ConsoleError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ConsoleError> {
        let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(req, state)
            .await
            .map_err(|e| ConsoleError::bad_request(format!("unreadable form: {e}")))?;
        Ok(Self(pairs))
    }
}

/// The query string as a [`Form`].
pub struct QueryForm(pub Form);

impl<S: Send + Sync> FromRequestParts<S> for QueryForm {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ConsoleError> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ConsoleError::bad_request(format!("malformed query string: {e}")))?;
        Ok(Self(Form(pairs)))
    }
}

/// Percent-encodes a query string (`application/x-www-form-urlencoded`, with `%20` for space).
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    fn encode(out: &mut String, text: &str) {
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        encode(&mut out, name);
        out.push('=');
        encode(&mut out, value);
    }
    out
}

/// Earlier pages remembered for "previous".
const MAX_BACK: usize = 200;

/// The "previous" and "next" links of a keyset-paged listing at `path`: both keep the filters
/// `base` and move the cursor (`next_cursor` is where the store stopped). "Previous" works from
/// the stack of the earlier pages' cursors kept in the query string (`back=-.c2.c3`, `-` being
/// the first page), so no server state is needed and any page can be bookmarked.
pub fn pager(
    path: &str,
    base: &[(String, String)],
    form: &Form,
    next_cursor: Option<&str>,
) -> (Option<String>, Option<String>) {
    let link = |cursor: Option<&str>, back: &str| {
        let mut pairs: Vec<(&str, &str)> =
            base.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        if let Some(c) = cursor {
            pairs.push(("cursor", c));
        }
        if !back.is_empty() {
            pairs.push(("back", back));
        }
        format!("{path}?{}", query_string(pairs))
    };
    let back = form.get("back").unwrap_or("");
    let next = next_cursor.map(|next| {
        let this = form.get("cursor").unwrap_or("-");
        let stack = if back.is_empty() {
            this.to_owned()
        } else if back.split('.').count() >= MAX_BACK {
            back.to_owned()
        } else {
            format!("{back}.{this}")
        };
        link(Some(next), &stack)
    });
    let previous = form.get("cursor").map(|_| {
        let (rest, last) = back.rsplit_once('.').unwrap_or(("", back));
        let cursor = (!last.is_empty() && last != "-").then_some(last);
        link(cursor, rest)
    });
    (previous, next)
}

/// A time from a form as RFC 3339: RFC 3339 itself, a `datetime-local` value
/// (`2026-01-31T10:00`, taken as UTC) or a date (`2026-01-31`: its start, or with `end_of_day`
/// the start of the next day, so a "to" date includes that whole day).
pub fn form_time(value: &str, end_of_day: bool) -> Result<String, ConsoleError> {
    let value = value.trim();
    if vellum_core::time_fmt::parse_rfc3339(value).is_ok() {
        return Ok(value.to_owned());
    }
    let bad = || ConsoleError::bad_request(format!("{value:?} is not a date or time"));
    if value.len() == 10 {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        let mut date = time::Date::parse(value, format).map_err(|_| bad())?;
        if end_of_day {
            date = date.next_day().ok_or_else(bad)?;
        }
        return Ok(format!("{date}T00:00:00Z"));
    }
    let with_seconds = if value.len() == 16 {
        format!("{value}:00Z")
    } else {
        format!("{value}Z")
    };
    vellum_core::time_fmt::parse_rfc3339(&with_seconds).map_err(|_| bad())?;
    Ok(with_seconds)
}

/// An RFC 3339 time as the console shows it: `2026-01-31 10:00:00` (UTC, to the second).
pub fn short_time(rfc3339: &str) -> String {
    let mut shown: String = rfc3339.chars().take(19).collect();
    if shown.len() == 19 {
        shown.replace_range(10..11, " ");
    }
    shown
}

/// A string member of a JSON event, or "".
pub fn text_at(event: &serde_json::Value, pointer: &str) -> String {
    match event.pointer(pointer) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_attempts_are_limited_per_address() {
        let console = ConsoleState::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..SIGNIN_PER_MINUTE {
            assert!(console.signin_allowed(a).is_ok());
        }
        let wait = console.signin_allowed(a).expect_err("over the limit");
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(
            console.signin_allowed(b).is_ok(),
            "another address has its own budget"
        );
    }

    #[test]
    fn query_strings_are_percent_encoded() {
        assert_eq!(
            query_string([("q", "a b&c=d/é"), ("action", "auth.*")]),
            "q=a%20b%26c%3Dd%2F%C3%A9&action=auth.%2A"
        );
    }

    #[test]
    fn form_times_become_rfc3339() {
        assert_eq!(
            form_time("2026-01-31T10:00", false).expect("local"),
            "2026-01-31T10:00:00Z"
        );
        assert_eq!(
            form_time("2026-01-31", false).expect("date"),
            "2026-01-31T00:00:00Z"
        );
        assert_eq!(
            form_time("2026-01-31", true).expect("end"),
            "2026-02-01T00:00:00Z"
        );
        assert_eq!(
            form_time("2026-01-31T10:00:00+02:00", false).expect("rfc3339"),
            "2026-01-31T10:00:00+02:00"
        );
        assert!(form_time("yesterday", false).is_err());
        assert!(form_time("2026-13-01", false).is_err());
    }

    #[test]
    fn short_times() {
        assert_eq!(
            short_time("2026-01-31T10:00:00.123456Z"),
            "2026-01-31 10:00:00"
        );
        assert_eq!(short_time("odd"), "odd");
    }

    #[test]
    fn every_value_is_html_escaped() {
        let page = ErrorPage {
            status: 400,
            reason: "Bad Request",
            message: "<script>alert(1)</script> & \"quotes\" 'too'",
            css: "/x.css\"><script>",
        };
        let html = page.render().expect("renders");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62; &#38; &#34;quotes&#34;"));
        assert!(!html.contains("\"quotes\"") && !html.contains("'too'"));
    }

    #[tokio::test]
    async fn security_headers_are_on_every_response() {
        let response = security_headers(Html("x").into_response()).await;
        let h = response.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
        assert!(CSP.contains("script-src 'self'") && !CSP.contains("unsafe-inline"));
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        // A static file's own cache policy stands.
        let mut cached = Html("x").into_response();
        cached.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
        let cached = security_headers(cached).await;
        assert_eq!(
            cached.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(cached.headers()[header::CONTENT_SECURITY_POLICY], CSP);
    }
}
