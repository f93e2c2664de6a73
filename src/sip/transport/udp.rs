//! The UDP receive loop: one datagram is one message.

use std::sync::{Arc, Weak};

use tokio::net::UdpSocket;

use super::{upgrade, Inner};
use crate::sip::message::MAX_MESSAGE_SIZE;
use crate::sip::Transport;

pub(super) async fn receive_loop(socket: Arc<UdpSocket>, endpoint: Weak<Inner>) {
    // One byte more than the limit, so that an oversized datagram is seen
    // as such by the parser instead of silently truncated.
    let mut buf = vec![0u8; MAX_MESSAGE_SIZE + 1];
    loop {
        let (len, source) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on some systems; the socket is fine.
                tracing::debug!(error = %e, "UDP receive error");
                if upgrade(&endpoint).is_none() {
                    return;
                }
                continue;
            }
        };
        let Some(inner) = upgrade(&endpoint) else {
            return;
        };
        inner.dispatch(&buf[..len], source, Transport::Udp).await;
    }
}
