//! The operator's side of HTTPS: sign-in with `server.admin_password_hash`
//! (a session cookie: `Secure`, `HttpOnly`, `SameSite=Strict`), and the
//! figures of the stats page: `/api/stats` (JSON), `/api/stats/stream`
//! (Server-Sent Events, once a second) and `/api/stats/calls/{id}`.
//!
//! The figures come from an [`OperatorView`](super::OperatorView) the stats
//! module implements; signaling only authenticates and carries them.

use super::http::{check_password, json_error, Peer};
use super::AppState;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::RngCore;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::throttle::Throttle;

const COOKIE: &str = "gw_admin";
/// How long an operator stays signed in.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Operator sessions kept at once (a sign-in loop must not grow memory).
const MAX_SESSIONS: usize = 64;
/// Source addresses whose failed sign-ins are remembered.
const THROTTLE_CAPACITY: usize = 4096;
/// How often the stream sends the figures.
const STREAM_EVERY: Duration = Duration::from_secs(1);
const MAX_LOGIN_BODY: usize = 4 * 1024;

/// Operator sign-in state, shared by the handlers.
pub(crate) struct AdminAuth {
    hash: Option<String>,
    sessions: Mutex<HashMap<String, Instant>>,
    throttle: Mutex<Throttle<Option<IpAddr>>>,
}

impl AdminAuth {
    pub(crate) fn new(hash: Option<String>) -> Self {
        AdminAuth {
            hash,
            sessions: Mutex::new(HashMap::new()),
            throttle: Mutex::new(Throttle::new(THROTTLE_CAPACITY)),
        }
    }

    fn new_session(&self, now: Instant) -> String {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|_, expires| *expires > now);
            if sessions.len() >= MAX_SESSIONS {
                // The session closest to expiry makes room.
                if let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, e)| **e)
                    .map(|(k, _)| k.clone())
                {
                    sessions.remove(&oldest);
                }
            }
            sessions.insert(token.clone(), now + SESSION_TTL);
        }
        token
    }

    fn is_signed_in(&self, headers: &HeaderMap, now: Instant) -> bool {
        let Some(token) = cookie(headers, COOKIE) else {
            return false;
        };
        self.sessions
            .lock()
            .map(|s| s.get(token).is_some_and(|expires| *expires > now))
            .unwrap_or(false)
    }

    fn sign_out(&self, headers: &HeaderMap) {
        if let (Some(token), Ok(mut sessions)) = (cookie(headers, COOKIE), self.sessions.lock()) {
            sessions.remove(token);
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/admin/login",
            post(login).layer(DefaultBodyLimit::max(MAX_LOGIN_BODY)),
        )
        .route("/api/admin/logout", post(logout))
        .route("/api/stats", get(stats))
        .route("/api/stats/stream", get(stream))
        .route("/api/stats/calls/{id}", get(call_detail))
}

#[derive(Deserialize)]
struct LoginRequest {
    password: String,
}

async fn login(State(state): State<AppState>, Peer(peer): Peer, body: Bytes) -> Response {
    let admin = &state.admin;
    let Some(phc) = admin.hash.clone() else {
        return json_error(
            StatusCode::FORBIDDEN,
            "no operator password is configured (server.admin_password_hash)",
        );
    };
    let source = peer.map(|p| p.ip());
    let now = Instant::now();
    let wait = admin
        .throttle
        .lock()
        .ok()
        .and_then(|t| t.check(&source, now).err());
    if let Some(wait) = wait {
        return too_many(wait);
    }
    let Ok(LoginRequest { password }) = serde_json::from_slice(&body) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"password\": string}",
        );
    };
    let verified = match check_password(&state, password, phc).await {
        Ok(verified) => verified,
        Err(refusal) => return refusal,
    };
    if !verified {
        let wait = admin
            .throttle
            .lock()
            .map(|mut t| t.failure(&source, Instant::now()))
            .unwrap_or_default();
        warn!(peer = ?peer, wait_s = wait.as_secs(), "operator sign-in refused");
        return json_error(StatusCode::UNAUTHORIZED, "wrong password");
    }
    if let Ok(mut t) = admin.throttle.lock() {
        t.success(&source);
    }
    let token = admin.new_session(Instant::now());
    audit(&state, "sign-in", format!("from {peer:?}"));
    info!(peer = ?peer, "operator signed in");
    let cookie = format!(
        "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut response = Json(serde_json::json!({ "ok": true })).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
    response
}

/// 429 with `Retry-After` in whole seconds, rounded up (at least 1).
pub(crate) fn too_many(wait: Duration) -> Response {
    let mut response = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed sign-ins from this address; try again later",
    );
    // Rounded up: a client that waits what it is told is not refused again.
    let secs = wait.as_millis().div_ceil(1000).max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&secs) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    state.admin.sign_out(&headers);
    let mut response = Json(serde_json::json!({ "ok": true })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("gw_admin=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

fn unauthorized() -> Response {
    json_error(StatusCode::UNAUTHORIZED, "sign in as operator first")
}

/// The figures, computed off the async threads (the call records come from
/// SQLite).
async fn figures(state: &AppState) -> Option<serde_json::Value> {
    let operator = state.operator.clone()?;
    tokio::task::spawn_blocking(move || operator.stats())
        .await
        .ok()
}

async fn stats(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.admin.is_signed_in(&headers, Instant::now()) {
        return unauthorized();
    }
    match figures(&state).await {
        Some(value) => no_store(Json(value).into_response()),
        None => json_error(StatusCode::SERVICE_UNAVAILABLE, "no figures available"),
    }
}

async fn stream(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.admin.is_signed_in(&headers, Instant::now()) {
        return unauthorized();
    }
    audit(
        &state,
        "stats-stream",
        "live figures and recent call records".into(),
    );
    let events = futures_util::stream::unfold(
        (state, None::<tokio::time::Interval>),
        |(state, ticker)| async move {
            let mut ticker = ticker.unwrap_or_else(|| {
                let mut t = tokio::time::interval(STREAM_EVERY);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            ticker.tick().await;
            let value = figures(&state).await?;
            let event = Event::default().event("stats").data(value.to_string());
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (state, Some(ticker)),
            ))
        },
    );
    no_store(
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

async fn call_detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !state.admin.is_signed_in(&headers, Instant::now()) {
        return unauthorized();
    }
    let Some(operator) = state.operator.clone() else {
        return json_error(StatusCode::NOT_FOUND, "no such call");
    };
    let detail = tokio::task::spawn_blocking(move || {
        operator.audit("admin", "call-detail", &id);
        operator.call_detail(&id)
    })
    .await
    .ok()
    .flatten();
    match detail {
        Some(value) => no_store(Json(value).into_response()),
        None => json_error(StatusCode::NOT_FOUND, "no such call"),
    }
}

/// Records an operator action in the audit log, off the async threads.
fn audit(state: &AppState, action: &'static str, detail: String) {
    if let Some(operator) = state.operator.clone() {
        tokio::task::spawn_blocking(move || operator.audit("admin", action, &detail));
    }
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; gw_admin=abc; b=2"),
        );
        assert_eq!(cookie(&headers, "gw_admin"), Some("abc"));
        assert_eq!(cookie(&headers, "gw"), None);
    }

    #[test]
    fn a_session_is_valid_until_it_expires_or_signs_out() {
        let auth = AdminAuth::new(None);
        let now = Instant::now();
        let token = auth.new_session(now);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("gw_admin={token}")).unwrap(),
        );
        assert!(auth.is_signed_in(&headers, now));
        assert!(!auth.is_signed_in(&headers, now + SESSION_TTL));
        auth.sign_out(&headers);
        assert!(!auth.is_signed_in(&headers, now));
        let mut forged = HeaderMap::new();
        forged.insert(header::COOKIE, HeaderValue::from_static("gw_admin=00"));
        assert!(!auth.is_signed_in(&forged, now));
    }
}
