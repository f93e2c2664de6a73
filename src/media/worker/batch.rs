//! Many datagrams per syscall: `recvmmsg(2)` and `sendmmsg(2)` over
//! preallocated buffers.
//!
//! Why raw libc and not `quinn-udp`: quinn-udp batches with GSO/GRO, which
//! only helps when many segments go to *one* destination (a QUIC flow); our
//! packets on the shared browser port go to as many destinations as there are
//! calls, and quinn-udp sends one `sendmsg` per destination. `sendmmsg`
//! carries datagrams to different addresses in one call, which is exactly the
//! shape of a media worker's output. Both calls exist since Linux 3.0 and
//! `libc` is already a dependency; this file is the only `unsafe` of the
//! media plane, kept small.
//!
//! The buffers are `Vec<u8>` so the relay can decrypt, rewrite and encrypt in
//! them in place ([`CallRelay::handle_datagram_in_place`]); each has room for
//! the largest datagram we read plus the SRTP overhead, so the relay never
//! reallocates them.
//!
//! [`CallRelay::handle_datagram_in_place`]: crate::media::relay::CallRelay::handle_datagram_in_place

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use crate::media::srtp::MAX_OVERHEAD;

/// Largest datagram we read; a longer one is truncated by the kernel and
/// then fails authentication (media datagrams are far smaller).
pub const RECV_LEN: usize = 2048;
/// Datagrams per syscall. 32 covers a burst on the shared port without
/// making one socket monopolise a round.
pub const BATCH: usize = 32;

/// Receive buffers and the kernel structures pointing at them.
pub struct RecvBatch {
    /// The datagrams of the last [`recv`](Self::recv): `bufs[..n]`.
    pub bufs: Vec<Vec<u8>>,
    /// Their sources.
    pub from: Vec<SocketAddr>,
    msgs: Messages,
}

/// The kernel's view of a batch: per message an address buffer, one iovec
/// and the header pointing at both.
struct Messages {
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Messages {
    fn new(batch: usize) -> Self {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zeroed_name = unsafe { zeroed::<libc::sockaddr_storage>() };
        let zeroed_hdr = unsafe { zeroed::<libc::mmsghdr>() };
        Messages {
            names: vec![zeroed_name; batch],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                batch
            ],
            hdrs: vec![zeroed_hdr; batch],
        }
    }

    /// Points header `i` at address buffer `i` (`name_len` bytes of it)
    /// and iovec `i`. Done right before each syscall: the vectors must not
    /// have moved since.
    fn link(&mut self, i: usize, name_len: libc::socklen_t) {
        let hdr = &mut self.hdrs[i];
        hdr.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_hdr.msg_namelen = name_len;
        hdr.msg_hdr.msg_iov = &mut self.iovs[i];
        hdr.msg_hdr.msg_iovlen = 1;
        hdr.msg_hdr.msg_control = std::ptr::null_mut();
        hdr.msg_hdr.msg_controllen = 0;
        hdr.msg_hdr.msg_flags = 0;
        hdr.msg_len = 0;
    }
}

impl RecvBatch {
    pub fn new(batch: usize) -> Self {
        let batch = batch.max(1);
        RecvBatch {
            bufs: (0..batch)
                .map(|_| Vec::with_capacity(RECV_LEN + MAX_OVERHEAD))
                .collect(),
            from: vec![SocketAddr::from(([0, 0, 0, 0], 0)); batch],
            msgs: Messages::new(batch),
        }
    }

    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Reads up to `capacity()` datagrams waiting on `fd` without blocking.
    /// `Ok(n)`: `bufs[..n]` and `from[..n]` hold them. `WouldBlock` when
    /// none is waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            let buf = &mut self.bufs[i];
            buf.clear();
            if buf.capacity() < RECV_LEN + MAX_OVERHEAD {
                // The relay never shrinks a buffer; this only guards the
                // invariant `recv` relies on.
                buf.reserve(RECV_LEN + MAX_OVERHEAD);
            }
            self.msgs.iovs[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: RECV_LEN,
            };
            self.msgs
                .link(i, size_of::<libc::sockaddr_storage>() as libc::socklen_t);
        }
        // SAFETY: `hdrs[..n]` point at `n` iovecs, each at `RECV_LEN`
        // writable bytes of a live buffer, and at `n` address buffers of the
        // size given; all outlive the call.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        for i in 0..got {
            let len = (self.msgs.hdrs[i].msg_len as usize).min(RECV_LEN);
            // SAFETY: the kernel wrote `len` bytes at the start of the
            // buffer's spare capacity (capacity >= RECV_LEN >= len).
            unsafe { self.bufs[i].set_len(len) };
            self.from[i] = from_sockaddr(&self.msgs.names[i]).unwrap_or(self.from[i]);
        }
        Ok(got)
    }
}

/// Kernel structures for one `sendmmsg` batch.
pub struct SendBatch {
    msgs: Messages,
    name_lens: Vec<libc::socklen_t>,
}

/// What a [`SendBatch::send`] achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent: usize,
    /// Datagrams the kernel refused (socket buffer full, unreachable
    /// destination): media is loss-tolerant and is not retried.
    pub failed: usize,
    pub syscalls: usize,
}

impl SendBatch {
    pub fn new(batch: usize) -> Self {
        let batch = batch.max(1);
        SendBatch {
            msgs: Messages::new(batch),
            name_lens: vec![0; batch],
        }
    }

    /// Sends `datagrams` (bytes, destination) from `fd`, `capacity` per
    /// syscall, without blocking.
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        datagrams: impl Iterator<Item = (&'a [u8], SocketAddr)>,
    ) -> Sent {
        let mut total = Sent::default();
        let mut datagrams = datagrams.peekable();
        while datagrams.peek().is_some() {
            let mut n = 0;
            while n < self.msgs.hdrs.len() {
                let Some((data, to)) = datagrams.next() else {
                    break;
                };
                self.name_lens[n] = to_sockaddr(to, &mut self.msgs.names[n]);
                self.msgs.iovs[n] = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                };
                n += 1;
            }
            let part = self.send_prepared(fd, n);
            total.sent += part.sent;
            total.failed += part.failed;
            total.syscalls += part.syscalls;
        }
        total
    }

    /// Sends the first `n` prepared messages, skipping any the kernel
    /// refuses.
    fn send_prepared(&mut self, fd: RawFd, n: usize) -> Sent {
        for i in 0..n {
            self.msgs.link(i, self.name_lens[i]);
        }
        let mut out = Sent::default();
        let mut at = 0;
        while at < n {
            out.syscalls += 1;
            // SAFETY: `hdrs[at..n]` point at iovecs over live byte slices
            // (borrowed by the caller for this call) and at filled address
            // buffers of the lengths given.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.msgs.hdrs[at..].as_mut_ptr(),
                    (n - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                at += r as usize;
                out.sent += r as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if err.kind() == io::ErrorKind::WouldBlock {
                // The socket's send buffer is full: the rest would fail too.
                out.failed += n - at;
                break;
            }
            // This datagram cannot go (an unreachable destination, say);
            // the others may.
            out.failed += 1;
            at += 1;
        }
        out
    }
}

/// Writes `addr` as a C socket address; returns its length.
fn to_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // socket address type.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            sin.sin_zero = [0; 8];
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads a C socket address the kernel filled; `None` for a family that is
/// not IP (cannot happen on a UDP/IP socket).
fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Kernel buffer we ask for on a worker's shared browser port, each way.
pub const SHARED_SOCKET_BUFFER: usize = 4 << 20;

/// Asks for `bytes` of kernel receive and send buffer on `fd` (the kernel
/// caps it at `net.core.rmem_max`/`wmem_max`); returns the receive buffer
/// granted. For the shared browser port: it carries every call of its
/// worker, and with the default ~208 KiB (about 200 datagrams of kernel
/// accounting) a worker descheduled for a few ms at 50,000 packets/s
/// overflows it and loses a burst, where per-call sockets each have their
/// own. Best effort: a failure leaves the default and is reported.
pub fn grow_socket_buffers(fd: RawFd, bytes: usize) -> io::Result<usize> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: `value` outlives the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut granted: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `granted` and `len` outlive the call; `len` is its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut granted as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(granted).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_buffers_grow_as_asked_within_the_kernel_cap() {
        use std::os::fd::AsRawFd;
        let small = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let large = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let small = grow_socket_buffers(small.as_raw_fd(), 4096).unwrap();
        let large = grow_socket_buffers(large.as_raw_fd(), SHARED_SOCKET_BUFFER).unwrap();
        // The kernel doubles what it grants (bookkeeping) and caps it at
        // rmem_max, which is never below its 208 KiB default.
        assert!(small >= 4096, "{small}");
        assert!(large > small && large >= 200 * 1024, "{large} vs {small}");
    }
    use std::os::fd::AsRawFd;

    #[test]
    fn addresses_round_trip() {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage = unsafe { zeroed::<libc::sockaddr_storage>() };
        for s in ["192.0.2.1:5004", "[2001:db8::7]:40000", "0.0.0.0:1"] {
            let addr: SocketAddr = s.parse().unwrap();
            to_sockaddr(addr, &mut storage);
            assert_eq!(from_sockaddr(&storage), Some(addr));
        }
    }

    /// Three datagrams to two destinations in one `sendmmsg`, read back
    /// with one `recvmmsg` each.
    #[test]
    fn batches_over_loopback() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut send = SendBatch::new(BATCH);
        let out: [(&[u8], SocketAddr); 3] = [(b"one", to_a), (b"two", to_b), (b"three", to_a)];
        let sent = send.send(tx.as_raw_fd(), out.into_iter());
        assert_eq!(
            sent,
            Sent {
                sent: 3,
                failed: 0,
                syscalls: 1
            }
        );

        let mut recv = RecvBatch::new(BATCH);
        a.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        // Wait until both datagrams for `a` are there (loopback is
        // synchronous, but do not rely on it).
        let mut peek = [0u8; 8];
        a.peek_from(&mut peek).unwrap();
        let mut got = vec![];
        while got.len() < 2 {
            match recv.recv(a.as_raw_fd()) {
                Ok(n) => got.extend((0..n).map(|i| (recv.bufs[i].clone(), recv.from[i]))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    a.peek_from(&mut peek).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        let tx_addr = tx.local_addr().unwrap();
        assert_eq!(
            got,
            vec![(b"one".to_vec(), tx_addr), (b"three".to_vec(), tx_addr)]
        );
        assert!(recv.bufs[0].capacity() >= RECV_LEN + MAX_OVERHEAD);
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        b.peek_from(&mut peek).unwrap();
        assert_eq!(recv.recv(b.as_raw_fd()).unwrap(), 1);
        assert_eq!(recv.bufs[0], b"two");
        // Nothing left.
        assert_eq!(
            recv.recv(b.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
