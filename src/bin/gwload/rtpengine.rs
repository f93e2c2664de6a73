//! rtpengine as the comparison target: Debian's `rtpengine-daemon` started
//! by the tool in userspace only (no kernel module: `--table=-1`), one
//! worker thread, the ng control protocol (bencode over UDP) on loopback.
//!
//! Each call is SDES on both sides, the same crypto work as the gateway's
//! (AEAD_AES_128_GCM on one leg, AES_CM_128_HMAC_SHA1_80 on the other):
//! side A offers `RTP/SAVP` with an AES_CM_128_HMAC_SHA1_80 key of its own;
//! rtpengine's offer toward side B lists that suite *with A's key* followed
//! by every other suite with fresh keys; B answers AEAD_AES_128_GCM with
//! rtpengine's fresh key for it, and rtpengine answers A with a fresh
//! AES_CM_128_HMAC_SHA1_80 key. If B took A's suite instead, rtpengine 10.5
//! would hand both sides the other's key and pass SRTP through untouched
//! (daemon/call.c, "SRTP<>SRTP passthrough"), which would measure no crypto
//! at all. Every packet the tool receives is decrypted with the key from
//! rtpengine's SDP, so a passed-through packet would fail authentication
//! and show up as `auth_failed`, never as delivered.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use webrtc_sip_gateway::media::srtp::SrtpContext;
use webrtc_sip_gateway::sdp::crypto::CryptoAttribute;
use webrtc_sip_gateway::sdp::model::SessionDescription;
use webrtc_sip_gateway::types::{SrtpKeyMaterial, SrtpSuite};

use crate::bencode::Value;
use crate::media::{CallMedia, Dir, Endpoint};

/// Side A's suite (the trunk-like leg) and side B's (the browser-like leg).
pub const A_SUITE: SrtpSuite = SrtpSuite::AesCm128HmacSha1_80;
pub const B_SUITE: SrtpSuite = SrtpSuite::AeadAes128Gcm;

pub struct Rtpengine {
    child: Child,
    ng: UdpSocket,
}

/// Options for starting the daemon.
pub struct Start<'a> {
    pub bin: &'a str,
    pub ip: IpAddr,
    pub ng_port: u16,
    pub port_min: u16,
    pub port_max: u16,
    /// Pin the daemon to these cores (taskset), one thread each.
    pub cpus: Option<&'a [usize]>,
    pub log: &'a Path,
}

impl Rtpengine {
    pub fn start(o: &Start<'_>) -> Result<Self> {
        let log =
            std::fs::File::create(o.log).with_context(|| format!("create {}", o.log.display()))?;
        let args = [
            // The package's /etc/rtpengine/rtpengine.conf asks for the
            // kernel table and other interfaces: read no config file.
            "--config-file=none".to_string(),
            "--foreground".into(),
            "--log-stderr".into(),
            "--table=-1".into(),
            format!("--interface={}", o.ip),
            format!("--listen-ng=127.0.0.1:{}", o.ng_port),
            format!("--num-threads={}", o.cpus.map_or(1, |c| c.len().max(1))),
            format!("--port-min={}", o.port_min),
            format!("--port-max={}", o.port_max),
            "--log-level=4".into(),
            "--delete-delay=0".into(),
        ];
        let mut cmd = match o.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(crate::cpu_list(cpus)).arg(o.bin);
                c
            }
            None => Command::new(o.bin),
        };
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} (apt-get install rtpengine-daemon)", o.bin))?;
        let ng = UdpSocket::bind("127.0.0.1:0")?;
        ng.connect(("127.0.0.1", o.ng_port))?;
        let mut r = Rtpengine { child, ng };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = r.child.try_wait()? {
                bail!(
                    "rtpengine exited at start ({status}); see {}",
                    o.log.display()
                );
            }
            let ping = Value::dict([("command", Value::str("ping"))]);
            if let Ok(reply) = r.command_once(&ping, Duration::from_millis(200)) {
                if reply.get("result").and_then(Value::as_str) == Some("pong") {
                    return Ok(r);
                }
            }
            if Instant::now() > deadline {
                bail!("rtpengine does not answer ng ping; see {}", o.log.display());
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn command_once(&self, msg: &Value, timeout: Duration) -> Result<Value> {
        let cookie = format!("{:016x}", rand::random::<u64>());
        let mut out = format!("{cookie} ").into_bytes();
        msg.encode(&mut out);
        self.ng.send(&out)?;
        self.ng.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 65_535];
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let n = self.ng.recv(&mut buf)?;
            let Some(body) = buf[..n].strip_prefix(format!("{cookie} ").as_bytes()) else {
                continue; // a late reply to an earlier try
            };
            return Value::decode(body).ok_or_else(|| anyhow!("rtpengine sent bad bencode"));
        }
        bail!("no ng reply")
    }

    /// One ng command, retried; an answer other than `ok` is an error.
    fn command(&self, msg: &Value) -> Result<Value> {
        let mut last = anyhow!("no ng reply");
        for _ in 0..3 {
            match self.command_once(msg, Duration::from_secs(2)) {
                Ok(reply) => {
                    return match reply.get("result").and_then(Value::as_str) {
                        Some("ok") => Ok(reply),
                        other => Err(anyhow!(
                            "rtpengine: {} {}",
                            other.unwrap_or("?"),
                            reply
                                .get("error-reason")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                        )),
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sets up call `idx` with `offer` and `answer`; returns both ends.
    pub fn setup_call(&self, idx: u32, media_ip: IpAddr) -> Result<CallMedia> {
        let call_id = format!("gwload-{idx}-{:08x}", rand::random::<u32>());
        let (from_tag, to_tag) = (format!("a{idx}"), format!("b{idx}"));
        let sock_a = bind(media_ip)?;
        let sock_b = bind(media_ip)?;
        let key_a = SrtpKeyMaterial::generate(A_SUITE);
        let key_b = SrtpKeyMaterial::generate(B_SUITE);
        let ssrc_a: u32 = rand::random();
        let ssrc_b: u32 = rand::random();
        let sdp_a = sdes_sdp(media_ip, sock_a.local_addr()?.port(), 1, &key_a, ssrc_a);
        let offer = self.command(&Value::dict([
            ("command", Value::str("offer")),
            ("call-id", Value::str(&call_id)),
            ("from-tag", Value::str(&from_tag)),
            ("sdp", Value::str(&sdp_a)),
            ("DTLS", Value::str("off")),
            ("ICE", Value::str("remove")),
        ]))?;
        let to_b = reply_sdp(&offer)?;
        let (remote_b, tag_b, rtpengine_key_b) = sdes_side(&to_b, B_SUITE)?;
        if rtpengine_key_b.key.expose() == key_a.key.expose() {
            bail!(
                "rtpengine offered side A's own key to side B: SRTP would pass through undecrypted"
            );
        }
        let sdp_b = sdes_sdp(media_ip, sock_b.local_addr()?.port(), tag_b, &key_b, ssrc_b);
        let answer = self.command(&Value::dict([
            ("command", Value::str("answer")),
            ("call-id", Value::str(&call_id)),
            ("from-tag", Value::str(&from_tag)),
            ("to-tag", Value::str(&to_tag)),
            ("sdp", Value::str(&sdp_b)),
        ]))?;
        let to_a = reply_sdp(&answer)?;
        let (remote_a, _, rtpengine_key_a) = sdes_side(&to_a, A_SUITE)?;
        if rtpengine_key_a.key.expose() == key_b.key.expose() {
            bail!(
                "rtpengine answered side A with side B's key: SRTP would pass through undecrypted"
            );
        }
        let mut a = Endpoint::new(
            sock_a,
            remote_a,
            Some(SrtpContext::new(&key_a)?),
            Some(SrtpContext::new(&rtpengine_key_a)?),
            Dir::Forward,
        );
        a.ssrc = ssrc_a;
        let mut b = Endpoint::new(
            sock_b,
            remote_b,
            Some(SrtpContext::new(&key_b)?),
            Some(SrtpContext::new(&rtpengine_key_b)?),
            Dir::Back,
        );
        b.ssrc = ssrc_b;
        Ok(CallMedia {
            id: idx,
            tag: call_id,
            a,
            b,
        })
    }

    pub fn delete_call(&self, call_id: &str) -> Result<()> {
        self.command(&Value::dict([
            ("command", Value::str("delete")),
            ("call-id", Value::str(call_id)),
        ]))
        .map(|_| ())
    }

    pub fn stop(mut self) {
        // SAFETY: kill with our child's pid, which we have not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bind(ip: IpAddr) -> Result<UdpSocket> {
    let s = UdpSocket::bind((ip, 0)).context("bind a media socket")?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// An SDES audio SDP: PCMU, one a=crypto with `key` under `tag`.
fn sdes_sdp(ip: IpAddr, port: u16, tag: u32, key: &SrtpKeyMaterial, ssrc: u32) -> String {
    let crypto = CryptoAttribute::new(tag, key.clone()).to_sdp_value();
    format!(
        "v=0\r\no=gwload {sess} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{crypto}\r\n\
         a=ptime:20\r\na=sendrecv\r\na=ssrc:{ssrc} cname:gwload\r\n",
        sess = rand::random::<u32>(),
    )
}

fn reply_sdp(reply: &Value) -> Result<String> {
    reply
        .get("sdp")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("rtpengine's reply has no sdp"))
}

/// Where rtpengine wants media for one side, and its key of `suite` for
/// that side (with the tag).
fn sdes_side(sdp: &str, suite: SrtpSuite) -> Result<(SocketAddr, u32, SrtpKeyMaterial)> {
    let audio = SessionDescription::parse(sdp)?.audio()?;
    let ip = audio
        .connection
        .ok_or_else(|| anyhow!("rtpengine's SDP has no c= address"))?;
    let crypto = audio
        .valid_cryptos()
        .find(|c| c.suite == suite)
        .ok_or_else(|| anyhow!("rtpengine's SDP has no {suite} a=crypto"))?;
    let key = crypto
        .key()
        .ok_or_else(|| anyhow!("a=crypto without a key"))?;
    Ok((
        SocketAddr::new(ip, audio.port),
        crypto.tag,
        key.material.clone(),
    ))
}
