//! webrtc-sip-gateway: lets a browser place calls to SIP trunks with the media
//! encrypted on every hop that can carry it.
//!
//! Layers (dependencies point one way, see DESIGN.md):
//! `signaling → calls → {sip, sdp, policy, media}`; `config`, `types` and
//! `stats` are shared vocabulary; `cdr` stores call records and depends on
//! none of the layers; `certs` is the TLS certificate every TLS listener
//! serves; `gateway` starts everything.

pub mod calls;
pub mod cdr;
pub mod certs;
pub mod config;
pub mod demo;
pub mod fingerprint;
pub mod gateway;
pub mod media;
pub mod policy;
pub mod sdp;
pub mod signaling;
pub mod sip;
pub mod stats;
pub mod types;
