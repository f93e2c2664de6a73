//! The media plane: ports, ICE-lite, DTLS-SRTP with the browser, SDES-SRTP or
//! plain RTP with the trunk, and the relay between them.
//!
//! Layers, from the wire up:
//! - [`port_pool`] binds the UDP sockets of a call;
//! - [`demux`] tells STUN, DTLS, RTP and RTCP apart (RFC 7983);
//! - [`stun`], [`ice_lite`], [`dtls`], [`fingerprint`], [`srtp`] are the
//!   sans-IO protocol pieces of the browser leg and the SRTP contexts;
//! - [`ssrc_filter`], [`rewrite`] and [`relay`] are the per-call, sans-IO
//!   relay decision ([`relay::CallRelay`]): bytes and `Instant`s in, bytes to
//!   send, events and a deadline out;
//! - [`counters`] are the per-call and process-wide atomics read by `stats`;
//! - [`worker`] runs calls on a fixed set of threads (one per core by
//!   default), each owning its calls' sockets, reading and sending in
//!   batches; [`worker::browser_demux`] shares one browser port among a
//!   worker's calls; [`engine`] is the face the B2BUA uses ([`MediaEngine`] →
//!   [`MediaAllocation`] → [`MediaHandle`]).

use std::net::{IpAddr, SocketAddr};

pub mod client_hello;
pub mod counters;
pub mod demux;
pub mod dtls;
pub(crate) mod dtls_watch;
pub mod dtmf;
pub mod engine;
/// Shared with `sdp`, which parses what this module verifies.
pub use crate::fingerprint;
pub mod ice_lite;
pub mod port_pool;
pub mod relay;
pub mod rewrite;
pub mod rtcp_stats;
pub mod srtp;
pub mod ssrc_filter;
pub mod stun;
pub mod worker;

pub use counters::{
    CallCounters, DropReason, Leg, LegCounters, LegSnapshot, MediaStats, WorkerStats,
};
pub use engine::{MediaAllocation, MediaConfig, MediaEngine, MediaEvent, MediaHandle};
pub use relay::{
    BrowserLegParams, CallRelay, DtmfRefused, LegId, RelayEvent, RelayParams, TelephoneEvent,
    Transmit, TrunkCrypto, TrunkLegParams,
};

/// Errors of the media plane that reach the B2BUA (allocation, keying). Drops
/// on the packet path are not errors: they are counted ([`DropReason`]).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(
        "media port range {min}-{max} on {ip} is exhausted (no free UDP port or RTP/RTCP pair)"
    )]
    PortsExhausted { ip: IpAddr, min: u16, max: u16 },
    #[error("invalid media port range {min}-{max}: {reason}")]
    InvalidPortRange {
        min: u16,
        max: u16,
        reason: &'static str,
    },
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("media workers unavailable: {0}")]
    Workers(String),
    #[error("cannot key SRTP for the {leg} leg ({suite}): {reason}")]
    Srtp {
        leg: &'static str,
        suite: crate::types::SrtpSuite,
        reason: String,
    },
}
