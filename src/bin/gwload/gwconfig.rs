//! A gateway config for a load run: one trunk pointing at the tool's UAS
//! and one account to log in with (PROTOCOL.md section 2).

use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, Result};

use crate::uas::TrunkMedia;

pub struct GatewayConfig<'a> {
    pub https: SocketAddr,
    pub sip: SocketAddr,
    pub uas: SocketAddr,
    pub public_ip: IpAddr,
    pub data_dir: &'a str,
    pub account: &'a str,
    pub password: &'a str,
    pub trunk_media: TrunkMedia,
    /// Media ports: enough for the browser and trunk legs of every call.
    pub port_min: u16,
    pub port_max: u16,
    /// Signaling sockets the account may hold: one per call (the gateway
    /// allows 32 by default).
    pub sessions: usize,
}

/// A TOML basic string (JSON's escaping is valid TOML).
fn s(v: &str) -> String {
    serde_json::Value::String(v.to_string()).to_string()
}

impl GatewayConfig<'_> {
    pub fn to_toml(&self) -> Result<String> {
        let hash = webrtc_sip_gateway::signaling::auth::hash_password(self.password)
            .map_err(|e| anyhow!("hash the password: {e}"))?;
        let secret: [u8; 24] = rand::random();
        let (callee_stream, secure_media) = match self.trunk_media {
            TrunkMedia::Sdes => ("sdes", "mandatory"),
            TrunkMedia::Plain => ("decrypted", "forbidden"),
        };
        Ok(format!(
            "# Written by `gwload gateway-config`: a trunk pointing at gwload's UAS.\n\
             [server]\nhttps_listen = {https}\npublic_ip = {ip}\ndata_dir = {data}\n\
             token_secret = {secret}\nmax_sessions_per_account = {sessions}\n\
             max_sessions_per_source = {sessions}\n\n\
             [sip]\nudp_listen = {sip}\n\n\
             [media]\nport_min = {pmin}\nport_max = {pmax}\n\n\
             [[trunks]]\nname = \"gwload\"\nuri = {uri}\ncallee_stream = \"{callee_stream}\"\n\
             secure_media = \"{secure_media}\"\nsrtp_suites = [\"AES_CM_128_HMAC_SHA1_80\"]\n\
             inbound_sources = [\"127.0.0.1/32\"]\noptions_interval = 0\n\n\
             [[accounts]]\nname = {account}\npassword_hash = {hash}\ntrunk = \"gwload\"\n",
            https = s(&self.https.to_string()),
            ip = s(&self.public_ip.to_string()),
            data = s(self.data_dir),
            secret = s(&hex::encode(secret)),
            sip = s(&self.sip.to_string()),
            sessions = self.sessions,
            pmin = self.port_min,
            pmax = self.port_max,
            uri = s(&format!("sip:{};transport=udp", self.uas)),
            account = s(self.account),
            hash = s(&hash),
        ))
    }
}
