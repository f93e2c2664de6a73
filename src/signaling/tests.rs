//! Tests of the HTTP surface in process (`oneshot`), of the WebSocket on a
//! real listener with tokio-tungstenite, and of TLS with a rustls client that
//! trusts the generated certificate. They wait on events with timeouts,
//! never sleep, and bind port 0 only.

use super::*;
use crate::calls::api::{Security, SessionCommand, SessionControl, SessionEvent};
use crate::types::{AccountName, CallId};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tower::ServiceExt;

const SECRET: &str = "test-secret";
const WAIT: Duration = Duration::from_secs(10);

/// Hashing costs ~0.4 s in a debug build: do it once for all tests.
fn alice_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| auth::hash_password("wonderland").unwrap())
}

/// What the fake call layer saw, in order.
#[derive(Debug, PartialEq)]
enum Seen {
    Attached(AccountName),
    Command(SessionCommand),
    Dropped(AccountName),
}

struct FakeCalls {
    seen: mpsc::UnboundedSender<Seen>,
    /// Event senders of attached sessions, newest last.
    events: Mutex<Vec<mpsc::Sender<SessionEvent>>>,
}

struct FakeSession {
    account: AccountName,
    seen: mpsc::UnboundedSender<Seen>,
}

impl CallControl for FakeCalls {
    fn attach(
        &self,
        account: AccountName,
        events: mpsc::Sender<SessionEvent>,
    ) -> Box<dyn SessionControl> {
        self.events.lock().unwrap().push(events);
        let _ = self.seen.send(Seen::Attached(account.clone()));
        Box::new(FakeSession {
            account,
            seen: self.seen.clone(),
        })
    }
}

impl SessionControl for FakeSession {
    fn command(&mut self, cmd: SessionCommand) {
        let _ = self.seen.send(Seen::Command(cmd));
    }
}

impl Drop for FakeSession {
    fn drop(&mut self) {
        let _ = self.seen.send(Seen::Dropped(self.account.clone()));
    }
}

struct Fixture {
    state: AppState,
    calls: Arc<FakeCalls>,
    seen: mpsc::UnboundedReceiver<Seen>,
    healthy: Arc<AtomicBool>,
}

impl Fixture {
    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the fake call layer saw nothing")
            .expect("fake call layer gone")
    }

    fn last_events(&self) -> mpsc::Sender<SessionEvent> {
        self.calls.events.lock().unwrap().last().cloned().unwrap()
    }
}

fn config() -> SignalingConfig {
    SignalingConfig {
        https_listen: "127.0.0.1:0".parse().unwrap(),
        token_secret: Secret::new(SECRET.to_string()),
        token_ttl: Duration::from_secs(12 * 3600),
        accounts: HashMap::from([("alice".to_string(), alice_hash().to_string())]),
    }
}

fn fixture_with(config: SignalingConfig) -> Fixture {
    let (tx, seen) = mpsc::unbounded_channel();
    let calls = Arc::new(FakeCalls {
        seen: tx,
        events: Mutex::new(Vec::new()),
    });
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let state = AppState::new(
        config,
        calls.clone(),
        Arc::new(|| "# TYPE calls_active gauge\ncalls_active 0\n".to_string()),
        Arc::new(move || flag.load(Ordering::SeqCst)),
    );
    Fixture {
        state,
        calls,
        seen,
        healthy,
    }
}

fn fixture() -> Fixture {
    fixture_with(config())
}

fn token(account: &str) -> String {
    auth::mint_token(SECRET.as_bytes(), account, Duration::from_secs(600)).unwrap()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "signaling-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn body_text(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn get(state: &AppState, uri: &str) -> axum::response::Response {
    app(state.clone())
        .oneshot(
            Request::get(uri)
                .header(header::HOST, "gw.example:8443")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
}

async fn login(state: &AppState, body: &str) -> (StatusCode, Value) {
    let response = app(state.clone())
        .oneshot(
            Request::post("/api/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let text = body_text(response).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

// ---------------------------------------------------------------- HTTP

#[tokio::test]
async fn web_client_is_served_with_headers() {
    let f = fixture();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let response = get(&f.state, path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let h = response.headers();
        assert_eq!(h[header::CONTENT_TYPE], content_type, "{path}");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{path}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(
            csp.contains("connect-src 'self' wss://gw.example:8443;"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!body_text(response).await.is_empty());
    }
    assert_eq!(
        get(&f.state, "/nothing-here").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn csp_ignores_a_hostile_host_header() {
    let f = fixture();
    let response = app(f.state.clone())
        .oneshot(
            Request::get("/")
                .header(header::HOST, "evil; script-src *")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(!csp.contains("evil"), "{csp}");
    assert!(csp.contains("connect-src 'self';"), "{csp}");
}

#[tokio::test]
async fn login_good_password_gives_a_working_token() {
    let f = fixture();
    let (status, body) = login(&f.state, r#"{"account":"alice","password":"wonderland"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in"], 12 * 3600);
    let token = body["token"].as_str().unwrap();
    assert_eq!(
        auth::verify_token(SECRET.as_bytes(), token).unwrap(),
        "alice"
    );
}

#[tokio::test]
async fn login_refusals() {
    let f = fixture();
    let (status, body) = login(&f.state, r#"{"account":"alice","password":"nope"}"#).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].is_string(), "{body}");
    let (status, unknown) = login(&f.state, r#"{"account":"mallory","password":"x"}"#).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Same answer: the response does not tell which names exist.
    assert_eq!(unknown, body);
    for bad in [
        "",
        "not json",
        r#"{"account":"alice"}"#,
        r#"{"account":1,"password":"x"}"#,
        "[]",
    ] {
        let (status, body) = login(&f.state, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body["error"].is_string(), "{bad}");
    }
}

#[tokio::test]
async fn healthz_follows_the_flag() {
    let f = fixture();
    let response = get(&f.state, "/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "ok");
    f.healthy.store(false, Ordering::SeqCst);
    assert_eq!(
        get(&f.state, "/healthz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let f = fixture();
    let response = get(&f.state, "/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4"
    );
    assert!(body_text(response).await.contains("calls_active 0"));
}

#[tokio::test]
async fn ws_token_is_checked_before_the_upgrade() {
    let f = fixture();
    // Without upgrade headers: a bad token is still a 401, a good one is
    // refused only for not being a WebSocket request.
    assert_eq!(
        get(&f.state, "/ws").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let ok = get(&f.state, &format!("/ws?token={}", token("alice"))).await;
    assert_ne!(ok.status(), StatusCode::UNAUTHORIZED);
    assert!(ok.status().is_client_error());
}

// ---------------------------------------------------------------- WebSocket

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Serves `app(state)` over plain HTTP on 127.0.0.1:0.
async fn listen(state: AppState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app(state)).await;
    });
    addr
}

async fn connect(addr: SocketAddr, token: &str) -> Result<Client, tungstenite::Error> {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .map(|(ws, _)| ws)
}

/// Connects as alice and waits until the call layer saw the session.
async fn attached(f: &mut Fixture, addr: SocketAddr) -> Client {
    let ws = connect(addr, &token("alice")).await.unwrap();
    assert_eq!(
        f.next_seen().await,
        Seen::Attached(AccountName("alice".into()))
    );
    ws
}

/// The next text frame as JSON (pings are skipped).
async fn next_json(ws: &mut Client) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame from the gateway")
            .expect("socket ended")
            .expect("socket error");
        match frame {
            WsMessage::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn send(ws: &mut Client, v: Value) {
    ws.send(WsMessage::Text(v.to_string().into()))
        .await
        .unwrap();
}

/// The close code the gateway sent, or `None` if the connection just ended.
async fn closed(ws: &mut Client) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("socket still open")
        {
            Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(WsMessage::Text(t))) => panic!("unexpected text {t}"),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

fn http_status(result: Result<Client, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade accepted"),
    }
}

#[tokio::test]
async fn ws_refuses_missing_forged_expired_and_unknown_tokens() {
    let f = fixture();
    let addr = listen(f.state.clone()).await;

    let missing = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await;
    assert_eq!(http_status(missing.map(|(ws, _)| ws)), 401);
    assert_eq!(http_status(connect(addr, "").await), 401);
    assert_eq!(http_status(connect(addr, "garbage").await), 401);

    let forged = auth::mint_token(b"another secret", "alice", Duration::from_secs(600)).unwrap();
    assert_eq!(http_status(connect(addr, &forged).await), 401);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": now - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(http_status(connect(addr, &expired).await), 401);

    assert_eq!(http_status(connect(addr, &token("mallory")).await), 401);
    assert!(
        f.calls.events.lock().unwrap().is_empty(),
        "nothing attached"
    );
}

#[tokio::test]
async fn call_reaches_the_call_layer_and_events_come_back_as_protocol_json() {
    let mut f = fixture();
    let addr = listen(f.state.clone()).await;
    let mut ws = attached(&mut f, addr).await;

    send(
        &mut ws,
        json!({"type":"call","id":"c1","to":"+4930123456","sdp":"v=0\r\n"}),
    )
    .await;
    assert_eq!(
        f.next_seen().await,
        Seen::Command(SessionCommand::Call {
            id: CallId("c1".into()),
            to: "+4930123456".into(),
            sdp: "v=0\r\n".into(),
        })
    );

    let events = f.last_events();
    let id = || CallId("c1".into());
    let cases = [
        (
            SessionEvent::Progress {
                id: id(),
                code: 183,
            },
            json!({"type":"progress","id":"c1","code":183}),
        ),
        (
            SessionEvent::Answer {
                id: id(),
                sdp: "v=0\r\nanswer".into(),
            },
            json!({"type":"answer","id":"c1","sdp":"v=0\r\nanswer"}),
        ),
        (
            SessionEvent::Connected {
                id: id(),
                security: Security {
                    browser: "dtls-srtp AEAD_AES_128_GCM".into(),
                    trunk: "sdes-srtp AES_CM_128_HMAC_SHA1_80".into(),
                    private: false,
                },
            },
            json!({"type":"connected","id":"c1","security":{
                "browser":"dtls-srtp AEAD_AES_128_GCM",
                "trunk":"sdes-srtp AES_CM_128_HMAC_SHA1_80"}}),
        ),
        (
            SessionEvent::Connected {
                id: id(),
                security: Security {
                    browser: "dtls-srtp AES_CM_128_HMAC_SHA1_80 end to end".into(),
                    trunk: "dtls-srtp AES_CM_128_HMAC_SHA1_80 end to end".into(),
                    private: true,
                },
            },
            json!({"type":"connected","id":"c1","security":{
                "browser":"dtls-srtp AES_CM_128_HMAC_SHA1_80 end to end",
                "trunk":"dtls-srtp AES_CM_128_HMAC_SHA1_80 end to end",
                "private":true}}),
        ),
        (
            SessionEvent::Hangup {
                id: id(),
                code: 487,
                reason: "Request Terminated".into(),
            },
            json!({"type":"hangup","id":"c1","code":487,"reason":"Request Terminated"}),
        ),
        (
            SessionEvent::Error {
                id: None,
                code: 503,
                message: "no trunk".into(),
            },
            json!({"type":"error","code":503,"message":"no trunk"}),
        ),
    ];
    for (event, expected) in cases {
        events.send(event).await.unwrap();
        assert_eq!(next_json(&mut ws).await, expected);
    }

    send(&mut ws, json!({"type":"hangup","id":"c1"})).await;
    assert_eq!(
        f.next_seen().await,
        Seen::Command(SessionCommand::Hangup {
            id: CallId("c1".into())
        })
    );
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_socket_keeps_working() {
    let mut f = fixture();
    let addr = listen(f.state.clone()).await;
    let mut ws = attached(&mut f, addr).await;

    let text = |v: Value| WsMessage::Text(v.to_string().into());
    let cases: Vec<(WsMessage, u16, Option<&str>)> = vec![
        (WsMessage::Text("{not json".into()), 400, None),
        (WsMessage::Text("42".into()), 400, None),
        (text(json!({"id":"c1"})), 400, Some("c1")),
        (text(json!({"type":"teleport","id":"c1"})), 400, Some("c1")),
        (text(json!({"type":"call","to":"1","sdp":"v=0"})), 400, None),
        (
            text(json!({"type":"call","id":"","to":"1","sdp":"v=0"})),
            400,
            None,
        ),
        (
            text(json!({"type":"call","id":"c1","to":"","sdp":"v=0"})),
            400,
            Some("c1"),
        ),
        (
            text(json!({"type":"call","id":"c1","to":"1"})),
            400,
            Some("c1"),
        ),
        (
            text(json!({"type":"call","id":7,"to":"1","sdp":"v=0"})),
            400,
            None,
        ),
        (
            text(json!({"type":"call","id":"c1","to":1,"sdp":"v=0"})),
            400,
            Some("c1"),
        ),
        (
            text(json!({"type":"call","id":"x".repeat(65),"to":"1","sdp":"v=0"})),
            400,
            None,
        ),
        (
            text(json!({"type":"call","id":"c1","to":"sip:bob@evil","sdp":"v=0"})),
            400,
            Some("c1"),
        ),
        (
            text(json!({"type":"call","id":"c1","to":"1".repeat(65),"sdp":"v=0"})),
            400,
            Some("c1"),
        ),
        (
            text(json!({"type":"call","id":"c1","to":"1","sdp":"a".repeat(16 * 1024 + 1)})),
            400,
            Some("c1"),
        ),
        (text(json!({"type":"hangup"})), 400, None),
        (WsMessage::Binary(vec![1u8, 2, 3].into()), 400, None),
        (text(json!({"type":"accept","id":"c1"})), 400, Some("c1")),
        (text(json!({"type":"reject"})), 400, None),
        (
            text(json!({"type":"dtmf","id":"c1","digits":"1?"})),
            400,
            Some("c1"),
        ),
        (text(json!({"type":"hold"})), 400, None),
        (text(json!({"type":"resume","id":""})), 400, None),
    ];
    for (frame, code, id) in cases {
        let shown = format!("{frame:?}").chars().take(80).collect::<String>();
        ws.send(frame).await.unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "error", "{shown}: {reply}");
        assert_eq!(reply["code"], code, "{shown}: {reply}");
        assert_eq!(
            reply.get("id").and_then(Value::as_str),
            id,
            "{shown}: {reply}"
        );
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // Nothing reached the call layer, and the socket still works.
    send(&mut ws, json!({"type":"hangup","id":"c9"})).await;
    assert_eq!(
        f.next_seen().await,
        Seen::Command(SessionCommand::Hangup {
            id: CallId("c9".into())
        })
    );
}

#[tokio::test]
async fn closing_the_socket_drops_the_session() {
    let mut f = fixture();
    let addr = listen(f.state.clone()).await;
    let mut ws = attached(&mut f, addr).await;
    ws.close(None).await.unwrap();
    assert_eq!(
        f.next_seen().await,
        Seen::Dropped(AccountName("alice".into()))
    );
}

#[tokio::test]
async fn a_message_over_64_kib_closes_the_socket() {
    let mut f = fixture();
    let addr = listen(f.state.clone()).await;
    let mut ws = attached(&mut f, addr).await;
    let big = json!({"type":"call","id":"c1","to":"1","sdp":"a".repeat(70 * 1024)});
    ws.send(WsMessage::Text(big.to_string().into()))
        .await
        .unwrap();
    assert_eq!(closed(&mut ws).await, Some(CloseCode::Size));
    assert_eq!(
        f.next_seen().await,
        Seen::Dropped(AccountName("alice".into()))
    );
}

#[tokio::test]
async fn a_silent_browser_is_dropped_a_pinged_one_is_kept() {
    let timing = WsTiming {
        // Generous against a loaded CI machine: a pong late by more than a
        // second would fail the test.
        ping_every: Duration::from_millis(250),
        idle_timeout: Duration::from_millis(1500),
    };
    let mut f = fixture();
    f.state = f.state.clone().with_ws_timing(timing);
    let addr = listen(f.state.clone()).await;

    // This client reads (and so answers the pings) for two idle timeouts.
    let mut alive = attached(&mut f, addr).await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + 2 * timing.idle_timeout;
    while let Ok(frame) = tokio::time::timeout_at(until, alive.next()).await {
        match frame {
            Some(Ok(WsMessage::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings");
    send(&mut alive, json!({"type":"hangup","id":"c1"})).await;
    assert!(matches!(f.next_seen().await, Seen::Command(_)));

    // This one never reads, so it never answers: dropped after the timeout.
    let _silent = attached(&mut f, addr).await;
    assert_eq!(
        f.next_seen().await,
        Seen::Dropped(AccountName("alice".into()))
    );
}

#[tokio::test]
async fn shutdown_closes_sessions_going_away() {
    let mut f = fixture();
    let addr = listen(f.state.clone()).await;
    let mut ws = attached(&mut f, addr).await;
    f.state.close_sessions();
    assert_eq!(closed(&mut ws).await, Some(CloseCode::Away));
    assert_eq!(
        f.next_seen().await,
        Seen::Dropped(AccountName("alice".into()))
    );

    // A socket upgraded after the signal is closed at once, not left open.
    let mut late = attached(&mut f, addr).await;
    assert_eq!(closed(&mut late).await, Some(CloseCode::Away));
    assert_eq!(
        f.next_seen().await,
        Seen::Dropped(AccountName("alice".into()))
    );
}

// ---------------------------------------------------------------- TLS
// (Loading, renewal and reload of the certificate: crate::certs.)

/// A generated certificate in a directory of its own.
fn self_signed_cert() -> (TempDir, Arc<crate::certs::GatewayCert>) {
    let dir = TempDir::new();
    let source = crate::certs::CertSource::SelfSigned {
        dir: dir.0.clone(),
        names: vec!["localhost".into()],
    };
    let cert = crate::certs::GatewayCert::load(source, time::OffsetDateTime::now_utc()).unwrap();
    (dir, Arc::new(cert))
}

#[tokio::test]
async fn serve_reports_the_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (_dir, cert) = self_signed_cert();
    let mut cfg = config();
    cfg.https_listen = taken.local_addr().unwrap();
    let f = fixture_with(cfg);
    let err = serve(f.state.clone(), cert, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, SignalingError::Bind { .. }));
    assert!(
        err.to_string()
            .contains(&taken.local_addr().unwrap().to_string()),
        "{err}"
    );
}

/// A rustls client that trusts exactly the generated certificate and, like
/// current browsers, offers X25519MLKEM768 first.
fn client_trusting(cert_pem: &[u8]) -> rustls::ClientConfig {
    use rustls::crypto::aws_lc_rs;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(cert_pem).unwrap())
        .unwrap();
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![
        aws_lc_rs::kx_group::X25519MLKEM768,
        aws_lc_rs::kx_group::X25519,
    ];
    rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::test]
async fn https_and_wss_with_the_generated_certificate() {
    let (dir, cert) = self_signed_cert();
    let mut f = fixture_with(config());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(f.state.clone(), listener, cert, async move {
        let _ = stop_rx.await;
    }));
    let pem = std::fs::read(dir.0.join(crate::certs::CERT_FILE)).unwrap();
    let client = Arc::new(client_trusting(&pem));

    // One plain HTTPS request, synchronously over rustls::Stream.
    let https = client.clone();
    let (reply, group, version) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(https, name).unwrap();
        let mut tcp = loop {
            // The listener is bound already; connect succeeds at once.
            if let Ok(tcp) = std::net::TcpStream::connect(addr) {
                break tcp;
            }
        };
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = Vec::new();
        let _ = tls.read_to_end(&mut reply);
        let group = conn.negotiated_key_exchange_group().map(|g| g.name());
        (
            String::from_utf8_lossy(&reply).to_string(),
            group,
            conn.protocol_version(),
        )
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok"), "{reply}");
    assert_eq!(group, Some(rustls::NamedGroup::X25519MLKEM768));
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));

    // The signaling WebSocket over the same TLS.
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!(
            "wss://localhost:{}/ws?token={}",
            addr.port(),
            token("alice")
        ),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(client)),
    )
    .await
    .unwrap();
    assert_eq!(
        f.next_seen().await,
        Seen::Attached(AccountName("alice".into()))
    );
    send(&mut ws, json!({"type":"hangup","id":"c1"})).await;
    assert!(matches!(f.next_seen().await, Seen::Command(_)));

    // Shutdown closes the socket "going away" and the server returns.
    stop_tx.send(()).unwrap();
    assert_eq!(closed(&mut ws).await, Some(CloseCode::Away));
    assert_eq!(
        f.next_seen().await,
        Seen::Dropped(AccountName("alice".into()))
    );
    tokio::time::timeout(WAIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn config_debug_shows_no_secrets() {
    let cfg = config();
    let shown = format!("{cfg:?}");
    assert!(shown.contains("alice"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!shown.contains("argon2"), "{shown}");
}

/// One account may hold `sessions_per_account` sockets; the next is refused
/// 429 before the upgrade, and a closed socket frees its slot.
#[tokio::test]
async fn websocket_sessions_are_capped_per_account() {
    let mut f = fixture();
    f.state = f.state.clone().with_limits(crate::signaling::AccessLimits {
        sessions_per_account: 2,
        ..Default::default()
    });
    let addr = listen(f.state.clone()).await;
    let first = attached(&mut f, addr).await;
    let _second = attached(&mut f, addr).await;
    match connect(addr, &token("alice")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("third socket: {:?}", other.map(|_| ())),
    }
    drop(first);
    // The slot is freed once the first session's task has ended.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if connect(addr, &token("alice")).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
