//! Which call a datagram on a worker's shared browser port belongs to.
//!
//! In single-port mode every browser leg of a worker arrives on one UDP port
//! (ICE-lite allows it: the browser only ever sends to the candidate we
//! announced). The call is told apart the way str0m's, LiveKit's and
//! mediasoup's single-port modes do it:
//!
//! - a STUN Binding request names its call in USERNAME (`our-ufrag:theirs`,
//!   RFC 8445 7.2.2); our ufrag is unique per call, so requests are routed by
//!   it, whatever their source (a browser behind a NAT that reuses a port
//!   for another call still reaches the right one);
//! - once that call's ICE agent answered a check from an address with a
//!   success (the check's MESSAGE-INTEGRITY proved the browser knows the
//!   call's password), the address is the call's: DTLS, SRTP and SRTCP from
//!   it are routed by source address. A valid check from a new address (ICE
//!   restart, a network change) adds it, and moves it if another call had it;
//! - anything else from an address no call validated is dropped and counted.
//!
//! Sans-IO: the worker asks [`BrowserDemux::route`], lets the call handle the
//! datagram, then reports [`BrowserDemux::learn`] if the call validated the
//! source. Unit tests drive it without sockets or clocks.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

use crate::media::stun::StunMessage;

/// Most addresses remembered per call (host, srflx and relay candidates of
/// a couple of interfaces); the relay keeps as many (`MAX_BROWSER_ADDRS`).
const MAX_ADDRS_PER_CALL: usize = 8;

/// STUN Binding request: method 0x001, class request (RFC 5389 6).
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];

/// Why a datagram found no call (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// Not a STUN check, from an address no call validated.
    UnknownSource,
    /// A STUN Binding request whose USERNAME names no call of this worker
    /// (or that has no USERNAME, or does not parse).
    UnknownUfrag,
}

/// The routing table of one worker's shared browser port. `K` is the
/// worker's handle on a call (its slot).
#[derive(Debug)]
pub struct BrowserDemux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
    /// Per call: its ufrag and the addresses mapped to it, oldest first.
    calls: HashMap<K, (String, Vec<SocketAddr>)>,
}

impl<K: Copy + Eq + Hash> Default for BrowserDemux<K> {
    fn default() -> Self {
        BrowserDemux {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            calls: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> BrowserDemux<K> {
    /// Registers a call by its ICE ufrag. `false` (and nothing changes) when
    /// another call of this worker has the same ufrag: 48 random bits make
    /// that a one-in-10^14 event, but two calls must never share a route.
    pub fn add_call(&mut self, call: K, ufrag: &str) -> bool {
        if self.by_ufrag.contains_key(ufrag) || self.calls.contains_key(&call) {
            return false;
        }
        self.by_ufrag.insert(ufrag.to_owned(), call);
        self.calls.insert(call, (ufrag.to_owned(), Vec::new()));
        true
    }

    /// Forgets a call: its ufrag and every address mapped to it.
    pub fn remove_call(&mut self, call: K) {
        if let Some((ufrag, addrs)) = self.calls.remove(&call) {
            self.by_ufrag.remove(&ufrag);
            for addr in addrs {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// The call `datagram` from `from` goes to.
    pub fn route(&self, from: SocketAddr, datagram: &[u8]) -> Result<K, Unrouted> {
        if datagram.get(0..2) == Some(&BINDING_REQUEST[..]) {
            return self.route_check(datagram);
        }
        self.by_addr
            .get(&from)
            .copied()
            .ok_or(Unrouted::UnknownSource)
    }

    /// A Binding request goes by its USERNAME's first part, our ufrag.
    fn route_check(&self, datagram: &[u8]) -> Result<K, Unrouted> {
        let msg = StunMessage::parse(datagram).map_err(|_| Unrouted::UnknownUfrag)?;
        let username = msg.username().ok_or(Unrouted::UnknownUfrag)?;
        let ours = username.split(|b| *b == b':').next().unwrap_or(username);
        let ours = std::str::from_utf8(ours).map_err(|_| Unrouted::UnknownUfrag)?;
        self.by_ufrag
            .get(ours)
            .copied()
            .ok_or(Unrouted::UnknownUfrag)
    }

    /// `call` validated `from` (answered its check with a success): media
    /// from `from` is the call's from now on, taken from any other call.
    pub fn learn(&mut self, call: K, from: SocketAddr) {
        if !self.calls.contains_key(&call) {
            return;
        }
        match self.by_addr.insert(from, call) {
            Some(old) if old == call => return,
            Some(old) => {
                if let Some((_, addrs)) = self.calls.get_mut(&old) {
                    addrs.retain(|a| *a != from);
                }
            }
            None => {}
        }
        if let Some((_, addrs)) = self.calls.get_mut(&call) {
            if addrs.len() == MAX_ADDRS_PER_CALL {
                let oldest = addrs.remove(0);
                self.by_addr.remove(&oldest);
            }
            addrs.push(from);
        }
    }

    /// Number of calls registered (tests, debugging).
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// Number of addresses mapped (tests, debugging).
    pub fn addresses(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ice_lite::IceLite;
    use crate::media::relay::tests::SimBrowser;
    use crate::media::stun::{StunClass, StunWriter, BINDING};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A browser's check toward `ufrag` (password `pwd`).
    fn check(ufrag: &str, pwd: &str) -> Vec<u8> {
        SimBrowser::stun_request(ufrag, pwd, true)
    }

    const DTLS: &[u8] = &[22, 0xfe, 0xfd, 0, 0];
    const SRTP: &[u8] = &[0x80, 111, 0, 1];

    /// Two calls behind one IP (one NAT, two tabs), each on its own port:
    /// checks route by ufrag, media by the full source address.
    #[test]
    fn two_calls_from_one_ip_with_different_ports() {
        let mut demux = BrowserDemux::default();
        assert!(demux.add_call(1u32, "ufragAAA"));
        assert!(demux.add_call(2u32, "ufragBBB"));
        let (a, b) = (addr("192.0.2.7:50000"), addr("192.0.2.7:50001"));

        assert_eq!(demux.route(a, &check("ufragAAA", "pw")), Ok(1));
        demux.learn(1, a);
        assert_eq!(demux.route(b, &check("ufragBBB", "pw")), Ok(2));
        demux.learn(2, b);

        assert_eq!(demux.route(a, DTLS), Ok(1));
        assert_eq!(demux.route(b, DTLS), Ok(2));
        assert_eq!(demux.route(a, SRTP), Ok(1));
        assert_eq!(demux.route(b, SRTP), Ok(2));
        // The same IP on a third port is nobody's.
        assert_eq!(
            demux.route(addr("192.0.2.7:50002"), SRTP),
            Err(Unrouted::UnknownSource)
        );
    }

    /// An ICE restart (or a network change) validates a new address: media
    /// from it reaches the call, and the old one keeps working until the
    /// call ends. An address validated by another call moves to it.
    #[test]
    fn a_new_valid_address_remaps() {
        let mut demux = BrowserDemux::default();
        demux.add_call(1u32, "ufragAAA");
        demux.add_call(2u32, "ufragBBB");
        let (old, new) = (addr("192.0.2.7:50000"), addr("198.51.100.9:40000"));
        demux.learn(1, old);
        assert_eq!(demux.route(new, SRTP), Err(Unrouted::UnknownSource));
        // A check from the new address still reaches the call by ufrag.
        assert_eq!(demux.route(new, &check("ufragAAA", "pw")), Ok(1));
        demux.learn(1, new);
        assert_eq!(demux.route(new, SRTP), Ok(1));
        assert_eq!(demux.route(old, SRTP), Ok(1));

        // The NAT hands `old` to another browser tab, whose call 2 validates it.
        assert_eq!(demux.route(old, &check("ufragBBB", "pw")), Ok(2));
        demux.learn(2, old);
        assert_eq!(demux.route(old, SRTP), Ok(2));
        // Ending call 1 does not take `old` from call 2.
        demux.remove_call(1);
        assert_eq!(demux.route(old, SRTP), Ok(2));
        assert_eq!(demux.route(new, SRTP), Err(Unrouted::UnknownSource));
        assert_eq!(demux.addresses(), 1);
    }

    #[test]
    fn unknown_sources_and_ufrags_are_not_routed() {
        let mut demux = BrowserDemux::default();
        demux.add_call(1u32, "ufragAAA");
        let stranger = addr("203.0.113.5:1234");
        assert_eq!(demux.route(stranger, SRTP), Err(Unrouted::UnknownSource));
        assert_eq!(demux.route(stranger, DTLS), Err(Unrouted::UnknownSource));
        assert_eq!(demux.route(stranger, &[]), Err(Unrouted::UnknownSource));
        assert_eq!(
            demux.route(stranger, &check("ufragZZZ", "pw")),
            Err(Unrouted::UnknownUfrag)
        );
        // A Binding request that does not parse, or has no USERNAME.
        assert_eq!(
            demux.route(stranger, &[0x00, 0x01, 0, 0]),
            Err(Unrouted::UnknownUfrag)
        );
        let mut no_username = vec![];
        StunWriter::new(&mut no_username, BINDING, StunClass::Request, &[1; 12]).fingerprint();
        assert_eq!(
            demux.route(stranger, &no_username),
            Err(Unrouted::UnknownUfrag)
        );
        // A ufrag that is a prefix of ours is not ours.
        assert_eq!(
            demux.route(stranger, &check("ufrag", "pw")),
            Err(Unrouted::UnknownUfrag)
        );
    }

    #[test]
    fn ending_a_call_forgets_its_ufrag_and_addresses() {
        let mut demux = BrowserDemux::default();
        demux.add_call(1u32, "ufragAAA");
        let a = addr("192.0.2.7:50000");
        demux.learn(1, a);
        demux.remove_call(1);
        assert_eq!(demux.route(a, SRTP), Err(Unrouted::UnknownSource));
        assert_eq!(
            demux.route(a, &check("ufragAAA", "pw")),
            Err(Unrouted::UnknownUfrag)
        );
        assert_eq!((demux.calls(), demux.addresses()), (0, 0));
        // Learning for a call that is gone maps nothing.
        demux.learn(1, a);
        assert_eq!(demux.addresses(), 0);
    }

    #[test]
    fn duplicate_ufrag_is_refused_and_addresses_are_capped() {
        let mut demux = BrowserDemux::default();
        assert!(demux.add_call(1u32, "ufragAAA"));
        assert!(!demux.add_call(2u32, "ufragAAA"));
        for port in 0..20u16 {
            demux.learn(1, addr(&format!("192.0.2.7:{}", 5000 + port)));
        }
        assert_eq!(demux.addresses(), MAX_ADDRS_PER_CALL);
        // The newest are kept.
        assert_eq!(demux.route(addr("192.0.2.7:5019"), SRTP), Ok(1));
        assert!(demux.route(addr("192.0.2.7:5000"), SRTP).is_err());
    }

    /// Our own ICE-lite agent's credentials route too (the ufrag alphabet
    /// includes `+` and `/`).
    #[test]
    fn generated_credentials_route() {
        let (ufrag, pwd) = IceLite::generate_credentials();
        let mut demux = BrowserDemux::default();
        demux.add_call(9u32, &ufrag);
        assert_eq!(
            demux.route(addr("[2001:db8::1]:9"), &check(&ufrag, pwd.expose())),
            Ok(9)
        );
    }
}
