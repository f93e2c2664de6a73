//! UDP ports of the media plane, taken from `[port_min, port_max]`.
//!
//! A call needs one port for the browser leg (ICE, DTLS, SRTP and SRTCP all
//! multiplexed) and an even/odd pair for the trunk leg (RTP on the even port,
//! RTCP on the next, RFC 3550 11, for trunks that refuse rtcp-mux).
//!
//! The kernel is the source of truth for what is free: a port is tried by
//! binding it, and one in use (by another call, or another process) is
//! skipped. A rotating cursor spreads calls over the range so a port freed a
//! moment ago is not handed out again at once (late packets of the old call
//! would reach the new one). Releasing is dropping the socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use super::MediaError;

/// Hands out UDP sockets bound on `ip` within the configured range.
#[derive(Debug)]
pub struct PortPool {
    ip: IpAddr,
    min: u16,
    max: u16,
    /// Offset into the range where the next search starts.
    cursor: AtomicU32,
}

/// A bound socket and its port.
#[derive(Debug)]
pub struct BoundPort {
    pub port: u16,
    /// Non-blocking; a media worker registers it with its poller.
    pub socket: std::net::UdpSocket,
}

impl PortPool {
    /// A pool over `[min, max]`. The range must hold at least one even/odd
    /// pair and must not include port 0.
    pub fn new(ip: IpAddr, min: u16, max: u16) -> Result<Self, MediaError> {
        let invalid = |reason| MediaError::InvalidPortRange { min, max, reason };
        if min == 0 {
            return Err(invalid("port 0 is not a port"));
        }
        if min > max {
            return Err(invalid("port_min is above port_max"));
        }
        // Smallest even port >= min must have its odd neighbour in range.
        let first_even = u32::from(min) + u32::from(min % 2);
        if first_even + 1 > u32::from(max) {
            return Err(invalid("the range holds no even/odd RTP/RTCP pair"));
        }
        let start = rand::random::<u32>() % (u32::from(max) - u32::from(min) + 1);
        Ok(PortPool {
            ip,
            min,
            max,
            cursor: AtomicU32::new(start),
        })
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    fn len(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    fn exhausted(&self) -> MediaError {
        MediaError::PortsExhausted {
            ip: self.ip,
            min: self.min,
            max: self.max,
        }
    }

    /// Binds one port (the browser leg).
    pub fn bind_one(&self) -> Result<BoundPort, MediaError> {
        let len = self.len();
        let start = self.cursor.fetch_add(1, Relaxed);
        for i in 0..len {
            let port = (u32::from(self.min) + (start.wrapping_add(i)) % len) as u16;
            if let Some(bound) = self.try_bind(port)? {
                self.cursor
                    .store(start.wrapping_add(i).wrapping_add(1), Relaxed);
                return Ok(bound);
            }
        }
        Err(self.exhausted())
    }

    /// Binds an even port and the odd one after it (the trunk leg's RTP and
    /// RTCP).
    pub fn bind_pair(&self) -> Result<(BoundPort, BoundPort), MediaError> {
        let first_even = u32::from(self.min) + u32::from(self.min % 2);
        // Number of even ports p in range with p + 1 also in range.
        let pairs = (u32::from(self.max) + 1 - first_even) / 2;
        let start = self.cursor.fetch_add(2, Relaxed) / 2;
        for i in 0..pairs {
            let rtp = (first_even + 2 * ((start.wrapping_add(i)) % pairs)) as u16;
            let Some(rtp_sock) = self.try_bind(rtp)? else {
                continue;
            };
            match self.try_bind(rtp + 1)? {
                Some(rtcp_sock) => {
                    let next = u32::from(rtp) + 2 - u32::from(self.min);
                    self.cursor.store(next, Relaxed);
                    return Ok((rtp_sock, rtcp_sock));
                }
                // The odd half is taken: free the even one and move on.
                None => drop(rtp_sock),
            }
        }
        Err(self.exhausted())
    }

    /// `Ok(None)` when the port is in use; other bind errors (address not
    /// local, permission) are configuration problems and are returned.
    fn try_bind(&self, port: u16) -> Result<Option<BoundPort>, MediaError> {
        let addr = SocketAddr::new(self.ip, port);
        let bound = std::net::UdpSocket::bind(addr).and_then(|socket| {
            socket.set_nonblocking(true)?;
            Ok(socket)
        });
        match bound {
            Ok(socket) => Ok(Some(BoundPort { port, socket })),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
            Err(source) => Err(MediaError::Bind { addr, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A free range of `n` ports, found by binding port 0 and hoping the
    /// neighbours are free too (retrying a few times).
    fn free_range(n: u16) -> (u16, u16) {
        for _ in 0..50 {
            let probe = std::net::UdpSocket::bind((LO, 0)).unwrap();
            let base = probe.local_addr().unwrap().port();
            drop(probe);
            let base = base - base % 2;
            if base < 1024 || u32::from(base) + u32::from(n) > 65535 {
                continue;
            }
            let all_free = (base..base + n).all(|p| std::net::UdpSocket::bind((LO, p)).is_ok());
            if all_free {
                return (base, base + n - 1);
            }
        }
        panic!("no free port range");
    }

    #[test]
    fn rejects_bad_ranges() {
        assert!(matches!(
            PortPool::new(LO, 0, 10),
            Err(MediaError::InvalidPortRange { .. })
        ));
        assert!(PortPool::new(LO, 20001, 20000).is_err());
        assert!(PortPool::new(LO, 20001, 20002).is_err(), "no even/odd pair");
        assert!(PortPool::new(LO, 20000, 20001).is_ok());
    }

    #[test]
    fn pairs_are_even_odd_and_ports_distinct_until_exhausted() {
        let (min, max) = free_range(8);
        let pool = PortPool::new(LO, min, max).unwrap();
        let (rtp, rtcp) = pool.bind_pair().unwrap();
        assert_eq!(rtp.port % 2, 0);
        assert_eq!(rtcp.port, rtp.port + 1);
        let a = pool.bind_one().unwrap();
        let b = pool.bind_one().unwrap();
        let mut ports = vec![rtp.port, rtcp.port, a.port, b.port];
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 4);
        assert!(ports.iter().all(|p| (min..=max).contains(p)));

        // Take the rest; then the range is exhausted, and the error says so.
        let mut held = vec![];
        while let Ok(p) = pool.bind_one() {
            held.push(p);
        }
        assert_eq!(held.len(), 4);
        let err = pool.bind_one().unwrap_err();
        assert!(err.to_string().contains("exhausted"), "{err}");
        assert!(err.to_string().contains(&format!("{min}-{max}")), "{err}");
        assert!(pool.bind_pair().is_err());

        // Dropping releases: the pair can be bound again (wrapping around).
        drop((rtp, rtcp));
        let (rtp2, rtcp2) = pool.bind_pair().unwrap();
        assert_eq!(rtcp2.port, rtp2.port + 1);
    }

    #[test]
    fn skips_ports_held_by_someone_else() {
        let (min, max) = free_range(4);
        // Someone else holds min..min+2 (one whole pair).
        let _a = std::net::UdpSocket::bind((LO, min)).unwrap();
        let _b = std::net::UdpSocket::bind((LO, min + 1)).unwrap();
        let pool = PortPool::new(LO, min, max).unwrap();
        let (rtp, rtcp) = pool.bind_pair().unwrap();
        assert_eq!((rtp.port, rtcp.port), (min + 2, min + 3));
        assert!(pool.bind_pair().is_err());
    }

    #[test]
    fn other_bind_errors_are_reported_with_the_address() {
        // TEST-NET-1 is not a local address.
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let pool = PortPool::new(ip, 40000, 40010).unwrap();
        let err = pool.bind_one().unwrap_err();
        assert!(matches!(err, MediaError::Bind { .. }));
        assert!(err.to_string().contains("192.0.2.1:"), "{err}");
    }
}
