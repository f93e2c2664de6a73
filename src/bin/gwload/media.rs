//! The packet engine: every call's two endpoints send 20 ms G.711 frames at
//! the requested total rate and measure what comes back out of the target.
//!
//! A few threads (one by default: the tool gets one core) each own a share
//! of the calls outright, both endpoints of each, so nothing is shared per
//! packet. Each thread sends on a fixed schedule (packet k of the thread at
//! `t0 + k / rate`, streams in turn) and in between waits in `epoll` on its
//! sockets, draining each ready socket with `recvmmsg`. Sending stays one
//! `sendto` per packet: every stream has a socket of its own (the target
//! tells legs apart by address), so there is nothing to batch per socket.
//!
//! Each payload carries the call, the direction, a sequence number and the
//! send time on the tool's monotonic clock, so the receiving endpoint (same
//! process, same clock) measures one-way latency and per-direction loss.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use webrtc_sip_gateway::media::srtp::{SrtpContext, MAX_OVERHEAD};

use crate::frame::{self, Frame, FRAME_LEN};
use crate::procstat::{ProcSample, Target};

/// Which way a packet travels: `Forward` from the caller side (the browser,
/// or rtpengine's offerer) to the callee side (the SIP trunk), `Back` the
/// other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Forward = 0,
    Back = 1,
}

impl Dir {
    pub fn from_u8(v: u8) -> Option<Dir> {
        match v {
            0 => Some(Dir::Forward),
            1 => Some(Dir::Back),
            _ => None,
        }
    }
}

/// One end of one call's media: its socket, where it sends, and its keys.
pub struct Endpoint {
    /// Non-blocking.
    pub socket: UdpSocket,
    pub remote: SocketAddr,
    /// `None`: plain RTP.
    pub tx: Option<SrtpContext>,
    pub rx: Option<SrtpContext>,
    pub ssrc: u32,
    pub payload_type: u8,
    /// The direction of what this endpoint sends.
    pub dir: Dir,
    /// A STUN Binding request resent every few seconds (consent freshness,
    /// RFC 7675), as a browser does; `None` on trunk-like endpoints.
    pub keepalive: Option<Vec<u8>>,
    rtp_seq: u16,
    frame_seq: u64,
}

impl Endpoint {
    pub fn new(
        socket: UdpSocket,
        remote: SocketAddr,
        tx: Option<SrtpContext>,
        rx: Option<SrtpContext>,
        dir: Dir,
    ) -> Self {
        Endpoint {
            socket,
            remote,
            tx,
            rx,
            ssrc: rand::random(),
            payload_type: 0,
            dir,
            keepalive: None,
            rtp_seq: rand::random::<u16>() & 0x7fff,
            frame_seq: 0,
        }
    }
}

/// Both media ends of one call.
pub struct CallMedia {
    pub id: u32,
    /// The target's name for the call (signaling id or ng call-id).
    pub tag: String,
    /// The caller side: sends `Forward`.
    pub a: Endpoint,
    /// The callee side: sends `Back`.
    pub b: Endpoint,
}

/// One measured step at one rate.
#[derive(Debug, Clone, Copy)]
pub struct StepPlan {
    /// Packets per second into the target, all calls and both directions.
    pub pps: f64,
    /// Sending before the measured window (queues and caches settle).
    pub warmup: Duration,
    pub window: Duration,
    /// Receiving after the last send, so late packets are not lost ones.
    pub drain: Duration,
}

/// What one direction saw in a step.
#[derive(Debug, Default, Clone)]
pub struct DirStats {
    pub sent: u64,
    pub received: u64,
    /// Packets that failed SRTP authentication at the receiver: a target
    /// that forwarded with keys other than the ones it announced.
    pub auth_failed: u64,
    /// Send errors of the tool itself (a full socket buffer), not losses of
    /// the target.
    pub send_errors: u64,
    /// One-way latency of packets sent inside the window, nanoseconds.
    pub latencies_ns: Vec<u32>,
}

/// A finished step: per direction, plus the target's CPU over the window.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub plan: StepPlan,
    pub dirs: [DirStats; 2],
    /// Packets that arrived at the tool inside the window: what the target
    /// forwarded then.
    pub window_forwarded: u64,
    pub window_seconds: f64,
    /// Target CPU seconds (utime + stime) spent inside the window.
    pub target_cpu_seconds: f64,
    /// The tool's own CPU seconds inside the window: near one core means
    /// the tool, not the target, may be what limits the step.
    pub tool_cpu_seconds: f64,
}

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the tool's monotonic clock (the timestamp in payloads).
fn now_ns(now: Instant) -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    now.saturating_duration_since(base).as_nanos() as u64
}

/// Runs one step over `calls` (returned, so the next step reuses them) on
/// `threads` threads; samples `target`'s CPU at the window's edges.
pub fn run_step(
    calls: Vec<CallMedia>,
    threads: usize,
    plan: StepPlan,
    target: &Target,
) -> (Vec<CallMedia>, StepResult) {
    let _ = now_ns(Instant::now());
    let total_streams = (calls.len() * 2).max(1);
    let threads = threads.clamp(1, calls.len().max(1));
    // Round-robin shares, so each thread's share is within one call.
    let mut shares: Vec<Vec<CallMedia>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, call) in calls.into_iter().enumerate() {
        shares[i % threads].push(call);
    }
    let t0 = Instant::now() + Duration::from_millis(20);
    let window_start = t0 + plan.warmup;
    let window_end = window_start + plan.window;
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let rate = plan.pps * (share.len() * 2) as f64 / total_streams as f64;
            let times = Times {
                t0,
                window_start,
                window_end,
                drain_end: window_end + plan.drain,
                rate,
            };
            std::thread::spawn(move || worker(share, times))
        })
        .collect();
    let me = Target {
        pid: std::process::id(),
    };
    sleep_until(window_start);
    let (before, me_before) = (target.sample(), me.sample());
    sleep_until(window_end);
    let (after, me_after) = (target.sample(), me.sample());
    let mut calls = Vec::new();
    let mut dirs: [DirStats; 2] = Default::default();
    let mut forwarded = 0;
    for h in handles {
        let (share, stats) = match h.join() {
            Ok(x) => x,
            Err(_) => continue,
        };
        calls.extend(share);
        for (d, s) in dirs.iter_mut().zip(stats.dirs) {
            d.sent += s.sent;
            d.received += s.received;
            d.auth_failed += s.auth_failed;
            d.send_errors += s.send_errors;
            d.latencies_ns.extend(s.latencies_ns);
        }
        forwarded += stats.window_forwarded;
    }
    calls.sort_by_key(|c| c.id);
    for d in &mut dirs {
        d.latencies_ns.sort_unstable();
    }
    let cpu = ProcSample::cpu_seconds_between(&before, &after);
    (
        calls,
        StepResult {
            plan,
            dirs,
            window_forwarded: forwarded,
            window_seconds: plan.window.as_secs_f64(),
            target_cpu_seconds: cpu,
            tool_cpu_seconds: ProcSample::cpu_seconds_between(&me_before, &me_after),
        },
    )
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

#[derive(Clone, Copy)]
struct Times {
    t0: Instant,
    window_start: Instant,
    window_end: Instant,
    drain_end: Instant,
    /// This thread's packets per second.
    rate: f64,
}

#[derive(Default)]
struct WorkerStats {
    dirs: [DirStats; 2],
    window_forwarded: u64,
}

/// Packets one `recvmmsg` may return.
const BATCH: usize = 32;
/// Room for the largest datagram the targets send us.
const BUF_LEN: usize = 1500;
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);

fn worker(mut calls: Vec<CallMedia>, t: Times) -> (Vec<CallMedia>, WorkerStats) {
    let mut stats = WorkerStats::default();
    let streams = calls.len() * 2;
    if streams == 0 {
        return (calls, stats);
    }
    let window = (now_ns(t.window_start), now_ns(t.window_end));
    // SAFETY: epoll_create1 has no memory arguments.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return (calls, stats);
    }
    for i in 0..streams {
        let fd = endpoint(&mut calls, i).socket.as_raw_fd();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: `ev` lives across the call; the kernel copies it.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
    let mut rx = RecvBatch::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut out = vec![0u8; 12 + FRAME_LEN + MAX_OVERHEAD];
    let dt_ns = if t.rate > 0.0 {
        1e9 / t.rate
    } else {
        f64::INFINITY
    };
    let mut k: u64 = 0;
    let mut next_keepalive = t.t0;
    loop {
        let now = Instant::now();
        let sending = now < t.window_end && dt_ns.is_finite();
        if sending {
            loop {
                let due = t.t0 + Duration::from_nanos((k as f64 * dt_ns) as u64);
                if due > now {
                    break;
                }
                let i = (k % streams as u64) as usize;
                let id = calls_id(&calls, i);
                send_frame(endpoint(&mut calls, i), id, &mut out, &mut stats);
                k += 1;
            }
            if now >= next_keepalive {
                for i in 0..streams {
                    let e = endpoint(&mut calls, i);
                    if let Some(req) = &e.keepalive {
                        let _ = e.socket.send_to(req, e.remote);
                    }
                }
                next_keepalive = now + KEEPALIVE_EVERY;
            }
        } else if now >= t.drain_end {
            break;
        }
        let wait = if sending {
            let due = t.t0 + Duration::from_nanos((k as f64 * dt_ns) as u64);
            due.saturating_duration_since(now)
        } else {
            t.drain_end.saturating_duration_since(now)
        };
        // epoll_wait counts in milliseconds: sleep in it only for long waits
        // and poll otherwise, napping briefly when nothing came.
        let timeout_ms = if wait >= Duration::from_millis(2) {
            (wait.as_millis() as i32 - 1).max(1)
        } else {
            0
        };
        // SAFETY: `events` has room for its length.
        let n =
            unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        if n <= 0 {
            if timeout_ms == 0 && !wait.is_zero() {
                std::thread::sleep(wait.min(Duration::from_micros(200)));
            }
            continue;
        }
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            let e = endpoint(&mut calls, i);
            drain_socket(e, &mut rx, &mut stats, window, t.window_start, t.window_end);
        }
    }
    // SAFETY: `ep` is ours and closed once.
    unsafe { libc::close(ep) };
    (calls, stats)
}

fn endpoint(calls: &mut [CallMedia], i: usize) -> &mut Endpoint {
    let c = &mut calls[i / 2];
    if i.is_multiple_of(2) {
        &mut c.a
    } else {
        &mut c.b
    }
}

fn calls_id(calls: &[CallMedia], i: usize) -> u32 {
    calls[i / 2].id
}

fn send_frame(e: &mut Endpoint, call: u32, out: &mut [u8], stats: &mut WorkerStats) {
    let sent_at = now_ns(Instant::now());
    let f = Frame {
        call,
        dir: e.dir,
        seq: e.frame_seq,
        sent_ns: sent_at,
    };
    let len = frame::write_rtp(
        out,
        e.payload_type,
        e.rtp_seq,
        (e.frame_seq as u32).wrapping_mul(160),
        e.ssrc,
        &f,
    );
    let len = match &mut e.tx {
        Some(ctx) => match ctx.protect_rtp_in_place(out, len) {
            Ok(l) => l,
            Err(_) => return,
        },
        None => len,
    };
    e.rtp_seq = e.rtp_seq.wrapping_add(1);
    e.frame_seq += 1;
    let d = &mut stats.dirs[e.dir as usize];
    match e.socket.send_to(&out[..len], e.remote) {
        Ok(_) => d.sent += 1,
        Err(_) => d.send_errors += 1,
    }
}

fn drain_socket(
    e: &mut Endpoint,
    rx: &mut RecvBatch,
    stats: &mut WorkerStats,
    window: (u64, u64),
    window_start: Instant,
    window_end: Instant,
) {
    loop {
        let n = rx.recv(e.socket.as_raw_fd());
        if n == 0 {
            return;
        }
        let now = Instant::now();
        let now_n = now_ns(now);
        let in_window = now >= window_start && now < window_end;
        for j in 0..n {
            let len = rx.lens[j];
            let buf = &mut rx.bufs[j][..len];
            // STUN answers, DTLS and RTCP share the socket (RFC 7983);
            // RTCP has payload types 200-207 where RTP has its marker bit.
            if len < 12 || buf[0] >> 6 != 2 || (192..=223).contains(&buf[1]) {
                continue;
            }
            let len = match &mut e.rx {
                Some(ctx) => match ctx.unprotect_rtp_in_place(buf) {
                    Ok(l) => l,
                    Err(_) => {
                        // Counted on the direction this endpoint receives.
                        let d = if e.dir == Dir::Forward {
                            Dir::Back
                        } else {
                            Dir::Forward
                        };
                        stats.dirs[d as usize].auth_failed += 1;
                        continue;
                    }
                },
                None => len,
            };
            let Some(f) = frame::read_rtp(&buf[..len]) else {
                continue;
            };
            let d = &mut stats.dirs[f.dir as usize];
            d.received += 1;
            if in_window {
                stats.window_forwarded += 1;
            }
            if f.sent_ns >= window.0 && f.sent_ns < window.1 {
                let lat = now_n.saturating_sub(f.sent_ns).min(u64::from(u32::MAX));
                d.latencies_ns.push(lat as u32);
            }
        }
        if n < BATCH {
            return;
        }
    }
}

/// Buffers and headers for `recvmmsg`, built once per worker: the headers
/// point into `bufs`, whose heap storage never moves after `new`.
struct RecvBatch {
    bufs: Vec<[u8; BUF_LEN]>,
    _iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    lens: [usize; BATCH],
}

impl RecvBatch {
    fn new() -> Self {
        let mut bufs = vec![[0u8; BUF_LEN]; BATCH];
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            })
            .collect();
        let msgs = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero msghdr is valid (no name, no control).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        RecvBatch {
            bufs,
            _iovs: iovs,
            msgs,
            lens: [0; BATCH],
        }
    }

    /// Reads up to BATCH datagrams without blocking; returns how many.
    fn recv(&mut self, fd: i32) -> usize {
        // SAFETY: every header points at a live iovec and buffer of BUF_LEN
        // (both owned by self and never reallocated).
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return 0;
        }
        for (j, m) in self.msgs.iter().take(n as usize).enumerate() {
            self.lens[j] = m.msg_len as usize;
        }
        n as usize
    }
}

/// Percentile `p` (0..=100) of sorted nanoseconds, in milliseconds.
pub fn percentile_ms(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(f64::from(sorted[idx.min(sorted.len() - 1)]) / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile_ms(&v, 50.0), Some(51.0));
        assert_eq!(percentile_ms(&v, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }
}
