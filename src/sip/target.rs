//! Where a SIP message goes: a host, a port and a transport.
//!
//! A request inside a dialog goes to the first URI of its route set, or to
//! the remote target when the set is empty (RFC 3261 8.1.2 and 12.2.1.1);
//! [`Target::from_uri`] reads host, port and transport out of that URI the
//! way RFC 3263 does when no DNS is involved: an explicit port, else 5060
//! (5061 for `sips:` or `transport=tls`); the `transport` parameter, else the
//! dialog's own.
//!
//! Sans-IO: a host name stays a name here ([`Host::Name`]); whoever owns the
//! sockets resolves it (see `calls::driver`). SRV and NAPTR lookups (RFC
//! 3263 4.1/4.2) are not done: a trunk that names itself with a bare domain
//! and relies on SRV gets A/AAAA at port 5060, as its configured `uri` does.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::{SipError, Transport};

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, still to be resolved.
    Name(String),
}

/// Where one message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
    pub transport: Transport,
}

impl Target {
    /// An address already known (a request's source, a resolved trunk).
    pub fn addr(addr: SocketAddr, transport: Transport) -> Target {
        Target {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
            transport,
        }
    }

    /// The target a SIP URI names (`sip:x@192.0.2.7:5099;transport=tcp`,
    /// name-addr brackets already removed). `dialog` is the transport used
    /// when the URI names none, or one the gateway does not speak.
    pub fn from_uri(uri: &str, dialog: Transport) -> Result<Target, SipError> {
        let invalid = |reason: &str| SipError::InvalidUri {
            uri: uri.chars().take(80).collect(),
            reason: reason.to_string(),
        };
        // Read by hand: rsip 0.4 does not parse bracketed IPv6 hosts.
        let (scheme, rest) = uri
            .trim()
            .split_once(':')
            .ok_or_else(|| invalid("no scheme"))?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "sip" => false,
            "sips" => true,
            _ => return Err(invalid("not a sip: or sips: URI")),
        };
        // Headers (`?`) go; the host follows the last `@` (a user part may
        // hold `;` but never `@` unescaped), parameters follow it.
        let rest = rest.split('?').next().unwrap_or_default();
        let rest = rest.rsplit('@').next().unwrap_or(rest);
        let mut parts = rest.split(';');
        let hostport = parts.next().unwrap_or_default();
        let named = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("transport"))
            .map(|(_, v)| v.trim().to_ascii_lowercase());
        let transport = match named.as_deref() {
            // A dialog that is secure stays secure: a Contact or route
            // naming UDP or TCP never takes its requests out of TLS.
            _ if dialog == Transport::Tls => Transport::Tls,
            _ if secure => Transport::Tls,
            Some("udp") => Transport::Udp,
            Some("tcp") => Transport::Tcp,
            Some("tls") => Transport::Tls,
            // SCTP, WS: not spoken toward trunks; the dialog's transport is
            // the best guess that can be sent at all.
            _ => dialog,
        };
        let default_port = if secure || named.as_deref() == Some("tls") {
            5061
        } else {
            5060
        };
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (ip, after) = v6
                    .split_once(']')
                    .ok_or_else(|| invalid("unclosed IPv6 bracket"))?;
                let ip: IpAddr = ip.parse().map_err(|_| invalid("bad IPv6 address"))?;
                let port = match after.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if after.is_empty() => None,
                    None => return Err(invalid("junk after the IPv6 address")),
                };
                (Host::Ip(ip), port)
            }
            None => {
                let (name, port) = match hostport.split_once(':') {
                    Some((name, port)) => (name, Some(port)),
                    None => (hostport, None),
                };
                let host = match name.parse::<IpAddr>() {
                    Ok(ip) => Host::Ip(ip),
                    Err(_) if is_host_name(name) => Host::Name(name.to_ascii_lowercase()),
                    Err(_) => return Err(invalid("host is neither an address nor a name")),
                };
                (host, port)
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| invalid("bad port"))?,
            None => default_port,
        };
        if port == 0 {
            return Err(invalid("port 0"));
        }
        Ok(Target {
            host,
            port,
            transport,
        })
    }

    /// The socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(ip) => write!(f, "{}/{}", SocketAddr::new(*ip, self.port), self.transport),
            Host::Name(name) => write!(f, "{name}:{}/{}", self.port, self.transport),
        }
    }
}

/// RFC 3261 25.1 `hostname`: labels of letters, digits and hyphens, dots
/// between; at most 253 characters. What goes to the resolver is checked
/// here, since it comes from the network.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(uri: &str) -> Target {
        Target::from_uri(uri, Transport::Udp).unwrap()
    }

    #[test]
    fn ip_literals_ports_and_transports() {
        assert_eq!(
            t("sip:x@192.0.2.7:5099").socket_addr(),
            Some("192.0.2.7:5099".parse().unwrap())
        );
        let rr = t("sip:192.0.2.9;lr");
        assert_eq!(rr.socket_addr(), Some("192.0.2.9:5060".parse().unwrap()));
        assert_eq!(rr.transport, Transport::Udp);
        let tcp = t("sip:192.0.2.8:5070;transport=TCP;lr");
        assert_eq!(tcp.transport, Transport::Tcp);
        assert_eq!(tcp.port, 5070);
        assert_eq!(
            Target::from_uri("sip:192.0.2.8;transport=udp", Transport::Tcp)
                .unwrap()
                .transport,
            Transport::Udp
        );
        let v6 = t("sip:bob@[2001:db8::7]:5080");
        assert_eq!(
            v6.socket_addr(),
            Some("[2001:db8::7]:5080".parse().unwrap())
        );
        assert_eq!(t("sips:bob@192.0.2.7").port, 5061);
        assert_eq!(t("sip:bob@192.0.2.7;transport=tls").port, 5061);
        assert_eq!(
            t("sip:bob@192.0.2.7;transport=tls").transport,
            Transport::Tls
        );
        assert_eq!(t("sips:bob@192.0.2.7").transport, Transport::Tls);
        // Never out of TLS, whatever the Contact says.
        let down = Target::from_uri("sip:bob@192.0.2.7;transport=udp", Transport::Tls).unwrap();
        assert_eq!(down.transport, Transport::Tls);
        // A user part with parameters, and URI headers.
        assert_eq!(
            t("sip:+4930;npdi@192.0.2.7:5080;user=phone?Subject=x").socket_addr(),
            Some("192.0.2.7:5080".parse().unwrap())
        );
    }

    #[test]
    fn names_are_left_to_the_driver() {
        let n = t("sip:Proxy.Carrier.example:5070;lr");
        assert_eq!(n.host, Host::Name("proxy.carrier.example".into()));
        assert_eq!(n.socket_addr(), None);
        assert_eq!(n.to_string(), "proxy.carrier.example:5070/UDP");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "http://x",
            "sip:",
            "sip:a@b c",
            "sip:x@192.0.2.1:0",
            "sip:_x_",
            "sip:x@[::1",
            "sip:x@[::1]x",
            "sip:host:99999",
            "sip:host:-1",
        ] {
            assert!(
                Target::from_uri(bad, Transport::Udp).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
