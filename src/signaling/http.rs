//! Plain HTTP endpoints: `POST /api/login`, `GET /healthz`, `GET /metrics`.

use super::{auth, AppState};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use tracing::{info, warn};

/// A login body is two short strings; anything near this size is not one.
const MAX_LOGIN_BODY: usize = 16 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/login",
            post(login).layer(DefaultBodyLimit::max(MAX_LOGIN_BODY)),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// `{"error": message}` with `status`. The messages are fixed strings of
/// ours, never echoes of credentials.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The client's address when the server recorded it (not in in-process
/// tests), for the log lines of failed logins.
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| *addr),
        ))
    }
}

#[derive(Deserialize)]
struct LoginRequest {
    account: String,
    password: String,
}

/// `POST /api/login {"account","password"}` -> `{"token","expires_in"}`.
async fn login(State(state): State<AppState>, Peer(peer): Peer, body: Bytes) -> Response {
    // Parsed by hand rather than with the `Json` extractor, which answers
    // 415/422 for some malformed bodies; PROTOCOL.md wants 400 for all.
    let request: LoginRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "expected JSON {\"account\": string, \"password\": string}",
            )
        }
    };
    let LoginRequest { account, password } = request;
    let source = peer.map(|p| p.ip());
    let wait = state
        .login_throttle
        .lock()
        .ok()
        .and_then(|t| t.check(&source, std::time::Instant::now()).err());
    if let Some(wait) = wait {
        return super::admin::too_many(wait);
    }

    // Unknown accounts are checked against a decoy hash: same cost, same
    // answer, so the response time does not reveal which names exist.
    let known = state.config.accounts.get(&account).cloned();
    let phc = known
        .clone()
        .unwrap_or_else(|| auth::DECOY_HASH.to_string());
    let verified = match check_password(&state, password, phc).await {
        Ok(verified) => verified,
        Err(refusal) => return refusal,
    };
    if !(verified && known.is_some()) {
        // Each failure from this source lengthens its next wait; a right
        // password from elsewhere is not delayed.
        if let Ok(mut t) = state.login_throttle.lock() {
            t.failure(&source, std::time::Instant::now());
        }
        // Debug formatting escapes control characters in the untrusted name.
        warn!(account = ?account, peer = ?peer, "login refused");
        return json_error(StatusCode::UNAUTHORIZED, "invalid account or password");
    }

    let ttl = state.config.token_ttl;
    let token = match auth::mint_token(state.config.token_secret.expose().as_bytes(), &account, ttl)
    {
        Ok(token) => token,
        Err(e) => {
            warn!(error = %e, "cannot mint token");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot issue a token");
        }
    };
    if let Ok(mut t) = state.login_throttle.lock() {
        t.success(&source);
    }
    info!(account = %account, peer = ?peer, "login");
    let mut response = Json(serde_json::json!({
        "token": token,
        "expires_in": ttl.as_secs(),
    }))
    .into_response();
    // A bearer token must not sit in any cache.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Verifies `password` against the argon2 `phc` on the bounded pool of
/// password checks, off the async threads. `Err` is the response to give.
pub(crate) async fn check_password(
    state: &AppState,
    password: String,
    phc: String,
) -> Result<bool, Response> {
    state
        .password_checks
        .verify(password, phc)
        .await
        .map_err(|e| {
            warn!(error = %e, "password check not run");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sign-ins; try again",
            )
        })
}

async fn healthz(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let healthy = (state.healthy)();
    let (status, body) = if healthy {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    // The detail names the trunks: only for who may read /metrics (a load
    // balancer's plain check keeps getting "ok").
    let wants_detail = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "detail" || p.starts_with("detail="))
    });
    if wants_detail {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let (Some(detail), true) = (
            &state.health_detail,
            state.may_read_metrics(peer.map(|p| p.ip()), bearer),
        ) {
            let mut json = detail();
            if let Some(map) = json.as_object_mut() {
                map.insert("status".into(), body.into());
            }
            return (
                status,
                [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
                Json(json),
            )
                .into_response();
        }
    }
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        body,
    )
        .into_response()
}

async fn metrics(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: axum::http::HeaderMap,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !state.may_read_metrics(peer.map(|p| p.ip()), bearer) {
        warn!(peer = ?peer, "/metrics refused: not in server.metrics_allow and no valid bearer token");
        return json_error(
            StatusCode::FORBIDDEN,
            "metrics are readable from server.metrics_allow or with the bearer token",
        );
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        (state.metrics)(),
    )
        .into_response()
}
