//! The web client, compiled into the binary so that `run` works from any
//! directory, and the security headers every response carries.

use super::AppState;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file of `web-client/`.
struct Asset {
    paths: &'static [&'static str],
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        paths: &["/", "/index.html"],
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../web-client/index.html"),
    },
    Asset {
        paths: &["/app.js"],
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web-client/app.js"),
    },
    Asset {
        paths: &["/style.css"],
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web-client/style.css"),
    },
    Asset {
        paths: &["/stats", "/stats.html"],
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../web-client/stats.html"),
    },
    Asset {
        paths: &["/stats.js"],
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web-client/stats.js"),
    },
    Asset {
        paths: &["/stats.css"],
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web-client/stats.css"),
    },
    Asset {
        paths: &["/vendor/uplot.min.js"],
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web-client/vendor/uplot.min.js"),
    },
    Asset {
        paths: &["/vendor/uplot.min.css"],
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web-client/vendor/uplot.min.css"),
    },
    Asset {
        paths: &["/favicon.svg"],
        content_type: "image/svg+xml",
        body: include_str!("../../web-client/favicon.svg"),
    },
];

pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for asset in ASSETS {
        for path in asset.paths {
            router = router.route(
                path,
                get(move || async move {
                    (
                        [
                            (header::CONTENT_TYPE, asset.content_type),
                            // Revalidate every time: a stale app.js against a
                            // newer gateway would speak an old protocol.
                            (header::CACHE_CONTROL, "no-cache"),
                        ],
                        asset.body,
                    )
                        .into_response()
                }),
            );
        }
    }
    router
}

/// Adds the security headers to every response. The page may load only its
/// own files and talk only to its own origin (`fetch` and `wss`).
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let csp = content_security_policy(request.headers());
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `connect-src 'self'` covers `wss:` to the same host only in CSP level 3
/// browsers, so the WebSocket origin is also named explicitly when the Host
/// header is a plain host[:port] (anything else could inject directives).
fn content_security_policy(headers: &HeaderMap) -> String {
    let wss = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .map(|host| format!(" wss://{host}"))
        .unwrap_or_default();
    format!(
        "default-src 'self'; connect-src 'self'{wss}; img-src 'self' data:; \
         media-src 'self' blob: mediastream:; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}
