//! The SIP layer: message parsing and writing (over `rsip`), RFC 3261 client
//! transactions, dialogs, digest authentication, the sans-IO outgoing
//! (`OutgoingCall`) and incoming (`IncomingCall`) call state machines, the
//! trunk OPTIONS prober (`probe`) and registration (`register`), and the tokio
//! transport driver (`SipEndpoint`).
//!
//! Everything except `transport` is sans-IO: it takes messages and an explicit
//! `Instant`, and gives back bytes to send, events and the next deadline.

pub mod auth;
pub mod auth_server;
pub mod dialog;
pub mod info;
pub mod message;
pub mod own_requests;
pub mod probe;
pub mod refer;
pub mod register;
pub mod reinvite;
pub mod session_timer;
pub mod target;
pub mod tls;
pub mod transaction;
pub mod transport;
pub mod uac;
pub mod uas;

use std::net::SocketAddr;
use std::time::Duration;

pub use auth::DigestCredentials;
pub use transport::{IncomingRequest, SipEndpoint};
pub use uac::{OutgoingCall, UacConfig, UacEvent};
pub use uas::{IncomingCall, UasEvent};

/// RFC 3261 timer T1: round-trip time estimate.
pub const T1: Duration = Duration::from_millis(500);
/// RFC 3261 timer T2: maximum retransmission interval for non-INVITE requests
/// and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// RFC 3261 timer T4: maximum time a message stays in the network.
pub const T4: Duration = Duration::from_secs(5);

/// The transport a SIP message travels on. Reliable transports (TCP, TLS)
/// switch off the retransmission timers (RFC 3261 section 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// The token used in `Via: SIP/2.0/UDP`.
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The value of a URI's `;transport=` parameter.
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

impl From<crate::config::TrunkTransport> for Transport {
    fn from(t: crate::config::TrunkTransport) -> Self {
        match t {
            crate::config::TrunkTransport::Udp => Transport::Udp,
            crate::config::TrunkTransport::Tcp => Transport::Tcp,
            crate::config::TrunkTransport::Tls => Transport::Tls,
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.via_name())
    }
}

/// Errors of the SIP layer. Parse errors carry what a `400 Bad Request`
/// reason phrase or an operator needs: which header, what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("SIP message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed SIP message: {0}")]
    Malformed(String),
    #[error("missing mandatory header {0}")]
    MissingHeader(&'static str),
    #[error("invalid {header} header: {reason}")]
    InvalidHeader {
        header: &'static str,
        reason: String,
    },
    #[error("Content-Length {declared} but the body has {actual} bytes")]
    ContentLength { declared: usize, actual: usize },
    #[error("not a {expected}: {got}")]
    UnexpectedMessage { expected: &'static str, got: String },
    #[error("invalid digest challenge: {0}")]
    BadChallenge(String),
    #[error("unsupported digest {what} {value:?}")]
    UnsupportedDigest { what: &'static str, value: String },
    #[error("invalid URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("cannot bind SIP {transport} socket on {addr}: {source}")]
    Bind {
        transport: Transport,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot send SIP over {transport} to {addr}: {source}")]
    Send {
        transport: Transport,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS connection to a peer could not be made safely (its
    /// certificate is not trusted, no TLS profile for the address, the
    /// handshake failed). Nothing was sent, over any transport.
    #[error("TLS to {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
}

impl SipError {
    /// A reason phrase for a `400 Bad Request` answering this parse error.
    pub fn reason_phrase(&self) -> String {
        match self {
            SipError::MissingHeader(h) => format!("Missing {h}"),
            SipError::InvalidHeader { header, .. } => format!("Invalid {header}"),
            SipError::ContentLength { .. } => "Bad Content-Length".to_string(),
            SipError::TooLarge { .. } => "Message Too Large".to_string(),
            _ => "Bad Request".to_string(),
        }
    }
}
