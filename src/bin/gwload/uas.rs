//! The trunk side: a small SIP UAS on UDP that answers the gateway's INVITEs
//! with 200 and an SDP of its own (SDES `AES_CM_128_HMAC_SHA1_80` with a key
//! it makes, or plain RTP), answers BYE, OPTIONS and CANCEL with 200 and
//! takes ACKs silently. Each answered call hands its media endpoint to the
//! browser task waiting for that Request-URI user.
//!
//! No timers: if our 200 is lost, the gateway retransmits the INVITE and
//! gets the same 200 again.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use rsip::{Method, SipMessage};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use webrtc_sip_gateway::media::srtp::SrtpContext;
use webrtc_sip_gateway::sdp::crypto::CryptoAttribute;
use webrtc_sip_gateway::sdp::model::SessionDescription;
use webrtc_sip_gateway::sip::message::{self, ResponseParts};
use webrtc_sip_gateway::types::{SrtpKeyMaterial, SrtpSuite};

use crate::media::{Dir, Endpoint};

/// What the trunk side's media is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrunkMedia {
    /// SDES-SRTP, AES_CM_128_HMAC_SHA1_80, a key of our own.
    Sdes,
    /// RTP/AVP.
    Plain,
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Endpoint>>>>;

pub struct Uas {
    waiters: Waiters,
}

const USER_AGENT: &str = "gwload";

impl Uas {
    /// Binds `sip` and answers calls from then on; media sockets go on
    /// `media_ip`.
    pub async fn start(sip: SocketAddr, media_ip: IpAddr, mode: TrunkMedia) -> Result<Uas> {
        let socket = UdpSocket::bind(sip)
            .await
            .with_context(|| format!("bind the UAS's SIP socket {sip}"))?;
        let addr = socket.local_addr()?;
        let waiters: Waiters = Arc::default();
        let w = waiters.clone();
        tokio::spawn(async move {
            let mut answered: HashMap<String, bytes::Bytes> = HashMap::new();
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Some(reply) = handle(&buf[..n], addr, media_ip, mode, &w, &mut answered) else {
                    continue;
                };
                let _ = socket.send_to(&reply, from).await;
            }
        });
        Ok(Uas { waiters })
    }

    /// The media endpoint of the call to `user`, once its INVITE came.
    pub fn expect(&self, user: &str) -> oneshot::Receiver<Endpoint> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(user.to_string(), tx);
        }
        rx
    }
}

fn handle(
    data: &[u8],
    local: SocketAddr,
    media_ip: IpAddr,
    mode: TrunkMedia,
    waiters: &Waiters,
    answered: &mut HashMap<String, bytes::Bytes>,
) -> Option<bytes::Bytes> {
    let SipMessage::Request(req) = message::parse(data).ok()? else {
        return None;
    };
    let simple = |code: u16| {
        let resp = message::build_response(
            &req,
            code,
            ResponseParts {
                user_agent: USER_AGENT,
                ..Default::default()
            },
        );
        Some(message::to_bytes(resp))
    };
    match req.method {
        Method::Ack => None,
        Method::Invite => {
            let call_id = message::call_id(&req).ok()?;
            if let Some(resp) = answered.get(&call_id) {
                return Some(resp.clone());
            }
            let user = req.uri.auth.as_ref().map(|a| a.user.clone())?;
            let waiter = waiters.lock().ok()?.remove(&user);
            let Some(waiter) = waiter else {
                return simple(404);
            };
            let sdp = message::sdp_body(&req)?;
            let (answer, endpoint) = match answer_media(&sdp, media_ip, mode) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("gwload: UAS refuses the INVITE for {user}: {e:#}");
                    return simple(488);
                }
            };
            let tag = message::new_tag();
            let contact = format!("<sip:{USER_AGENT}@{local}>");
            let resp = message::build_response(
                &req,
                200,
                ResponseParts {
                    to_tag: Some(&tag),
                    contact: Some(&contact),
                    body: Some(("application/sdp", &answer)),
                    user_agent: USER_AGENT,
                    ..Default::default()
                },
            );
            let bytes = message::to_bytes(resp);
            answered.insert(call_id, bytes.clone());
            let _ = waiter.send(endpoint);
            Some(bytes)
        }
        _ => simple(200),
    }
}

/// Our answer to the gateway's offer, and the endpoint that sends and
/// receives what it agreed.
fn answer_media(offer: &str, media_ip: IpAddr, mode: TrunkMedia) -> Result<(String, Endpoint)> {
    let audio = SessionDescription::parse(offer)?.audio()?;
    let ip = audio
        .connection
        .ok_or_else(|| anyhow!("the offer has no c= address"))?;
    let remote = SocketAddr::new(ip, audio.port);
    let socket = std::net::UdpSocket::bind((media_ip, 0)).context("bind a trunk media socket")?;
    socket.set_nonblocking(true)?;
    let port = socket.local_addr()?.port();
    let (profile, crypto_line, tx, rx) = match mode {
        TrunkMedia::Sdes => {
            let theirs = audio
                .valid_cryptos()
                .find(|c| c.suite == SrtpSuite::AesCm128HmacSha1_80)
                .ok_or_else(|| anyhow!("no AES_CM_128_HMAC_SHA1_80 a=crypto in the offer"))?;
            let their_key = theirs
                .key()
                .ok_or_else(|| anyhow!("a=crypto without a key"))?;
            let ours = SrtpKeyMaterial::generate(SrtpSuite::AesCm128HmacSha1_80);
            let line = CryptoAttribute::new(theirs.tag, ours.clone()).to_sdp_value();
            (
                "RTP/SAVP",
                format!("a=crypto:{line}\r\n"),
                Some(SrtpContext::new(&ours)?),
                Some(SrtpContext::new(&their_key.material)?),
            )
        }
        TrunkMedia::Plain => ("RTP/AVP", String::new(), None, None),
    };
    let mut endpoint = Endpoint::new(socket, remote, tx, rx, Dir::Back);
    let answer = format!(
        "v=0\r\no=gwload {sess} 1 IN IP4 {media_ip}\r\ns=-\r\nc=IN IP4 {media_ip}\r\nt=0 0\r\n\
         m=audio {port} {profile} 0\r\na=rtpmap:0 PCMU/8000\r\n{crypto_line}\
         a=ptime:20\r\na=sendrecv\r\na=ssrc:{ssrc} cname:gwload\r\n",
        sess = rand::random::<u32>(),
        ssrc = endpoint.ssrc,
    );
    endpoint.payload_type = 0;
    Ok((answer, endpoint))
}
