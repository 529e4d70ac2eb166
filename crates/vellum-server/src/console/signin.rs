//! Sign-in and sign-out.
//!
//! The key typed into the form is hashed at once and the text zeroized; it is never logged,
//! never stored, never put in a page. It is authenticated exactly as a bearer key is
//! ([`crate::auth::Authenticator`]). Failed attempts are not written to the audit log (anyone
//! could fill it, as for the API's 401s); they are counted in `vellum_console_signin_failures_total`
//! and limited to [`super::SIGNIN_PER_MINUTE`] per client IP. Ingest keys cannot sign in: they
//! may read nothing.

use super::session::{self, COOKIE};
use super::{ConsoleError, ConsoleState, Form, Signed, assets, csrf, render};
use crate::AppState;
use crate::auth::{Authenticator, Role};
use askama::Template;
use axum::Extension;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use std::net::SocketAddr;
use std::time::Instant;
use zeroize::{Zeroize, Zeroizing};

/// The sign-in page.
#[derive(Template)]
#[template(path = "console/signin.html")]
struct SigninPage {
    csrf: String,
    error: Option<String>,
    css: &'static str,
}

/// `GET /`: the console.
pub async fn root() -> Response {
    Redirect::to("/console/dashboard").into_response()
}

fn signin_form(
    status: StatusCode,
    error: Option<String>,
    tls: bool,
) -> Result<Response, ConsoleError> {
    let token = session::random_token().map_err(|e| ConsoleError::internal(&e))?;
    let mut response = render(&SigninPage {
        csrf: token.clone(),
        error,
        css: assets::CSS.url(),
    })?;
    *response.status_mut() = status;
    let cookie = format!(
        "{}={token}; Path=/console/signin; HttpOnly; SameSite=Strict; Max-Age=3600{}",
        csrf::SIGNIN_COOKIE,
        if tls { "; Secure" } else { "" }
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ConsoleError::internal(&e))?,
    );
    Ok(response)
}

/// `GET /console/signin`: the form (or the dashboard, when already signed in).
pub async fn signin_page(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ConsoleError> {
    let (mut parts, _) = request.into_parts();
    if Signed::from_request_parts(&mut parts, &state).await.is_ok() {
        return Ok(Redirect::to("/console/dashboard").into_response());
    }
    signin_form(StatusCode::OK, None, tls(&state))
}

fn tls(state: &AppState) -> bool {
    state.config.tls_files().ok().flatten().is_some()
}

/// `POST /console/signin`: authenticates the key and opens a session.
pub async fn signin(
    State(state): State<AppState>,
    Extension(console): Extension<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(mut pairs): Form,
) -> Result<Response, ConsoleError> {
    let tls = tls(&state);
    if let Err(wait) = console.signin_allowed(peer.ip()) {
        for (_, value) in &mut pairs {
            value.zeroize();
        }
        metrics::counter!("vellum_console_signin_failures_total", "reason" => "rate_limited")
            .increment(1);
        let mut e = ConsoleError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many sign-in attempts from this address; try again in {wait} s"),
        );
        e.retry_after = Some(u32::try_from(wait).unwrap_or(u32::MAX));
        return Err(e);
    }
    console.sweep();
    let key = Zeroizing::new(
        pairs
            .iter()
            .find(|(n, _)| n == "apiKey")
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default(),
    );
    let token_ok = csrf::tokens_match(
        session::cookie_value(&headers, csrf::SIGNIN_COOKIE).unwrap_or_default(),
        pairs
            .iter()
            .find(|(n, _)| n == csrf::FIELD)
            .map(|(_, v)| v.as_str()),
    );
    for (_, value) in &mut pairs {
        value.zeroize();
    }
    if !csrf::same_origin(&headers, tls) || !token_ok {
        metrics::counter!("vellum_console_csrf_rejected_total").increment(1);
        return signin_form(
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or came from another site. Please try again.".into()),
            tls,
        );
    }
    let refuse = |reason: &'static str, message: &str| {
        metrics::counter!("vellum_console_signin_failures_total", "reason" => reason).increment(1);
        tracing::info!(ip = %peer.ip(), reason, "console sign-in refused");
        signin_form(StatusCode::UNAUTHORIZED, Some(message.to_owned()), tls)
    };
    if key.is_empty() {
        return refuse("empty", "Enter an API key.");
    }
    let hash = crate::auth::hash_key(&key);
    drop(key);
    let looked_up = match state.auth.cached(&hash) {
        Some(p) => Ok(p),
        None => {
            let auth: Authenticator = state.auth.clone();
            tokio::task::spawn_blocking(move || auth.lookup(&hash))
                .await
                .map_err(|e| ConsoleError::internal(&e))?
        }
    };
    let principal = match looked_up {
        Ok(p) => p,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            return refuse(
                "unknown_key",
                "That API key is not valid (unknown or revoked).",
            );
        }
        Err(e) => return Err(e.into()),
    };
    if principal.role == Role::Ingest {
        return refuse(
            "ingest_key",
            "Ingest keys only write events and cannot use the console; sign in with a reader, auditor or admin key.",
        );
    }
    // A new id at every sign-in (no fixation); a previous session of this browser ends.
    if let Some(old) = session::cookie_value(&headers, COOKIE) {
        console.inner().sessions.remove(old);
    }
    let (id, _) = console
        .inner()
        .sessions
        .create(principal, hash, Instant::now())
        .map_err(|e| ConsoleError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut response = Redirect::to("/console/dashboard").into_response();
    for cookie in [
        session::session_cookie(&id, tls),
        format!(
            "{}=; Path=/console/signin; HttpOnly; SameSite=Strict; Max-Age=0",
            csrf::SIGNIN_COOKIE
        ),
    ] {
        response.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).map_err(|e| ConsoleError::internal(&e))?,
        );
    }
    Ok(response)
}

/// `POST /console/signout`: ends the session.
pub async fn signout(
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed.check_form(&headers, &form)?;
    signed.console.inner().sessions.remove(&signed.session_id);
    let mut response = Redirect::to("/console/signin").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session::clear_cookie(COOKIE, signed.tls))
            .map_err(|e| ConsoleError::internal(&e))?,
    );
    Ok(response)
}
