//! The trunk's answer of a private outgoing call (`TrunkLegPlan::Private`):
//! the browser gets the trunk's fingerprint and `a=setup`, the relay starts
//! in passthrough (`TrunkCrypto::Passthrough`) and never holds a key.
//!
//! What a private call gives up, because the gateway cannot read or write
//! the encrypted stream: DTMF played by the gateway (`dtmf` messages are
//! refused as for a trunk without telephone-event; digits the browser sends
//! in-band reach the trunk when both negotiated telephone-event with the same
//! number) and re-INVITEs from the trunk (refused with 488, the call goes
//! on).
//!
//! Incoming (`IncomingLegPlan::Private`): the browsers were offered the
//! trunk's fingerprint and role; the one that accepts is answered to the
//! trunk at once with *its* fingerprint and role (the trunk cannot start
//! DTLS without them, so the 200 does not wait for DTLS as it does when the
//! gateway is the browser's DTLS peer).

use std::time::Instant;

use tracing::{info, warn};

use super::{
    codec_label, outgoing_relay_params, trunk_telephone_event, Cause, Common, Incoming,
    MediaCommand, Outgoing, Phase,
};
use crate::media::relay::{TrunkCrypto, TrunkUpdate};
use crate::sdp::{self, BrowserAnswer, BrowserAnswerParams, Setup};

impl Outgoing {
    pub(super) fn on_private_trunk_sdp(&mut self, c: &mut Common, sdp: &str, now: Instant) {
        if self.trunk_sdp.as_deref() == Some(sdp) {
            return;
        }
        let (Some(offer), Some(offer_params)) = (&self.offer, &self.offer_params) else {
            return;
        };
        let trunk = match sdp::parse_private_trunk_answer(sdp, offer_params, offer) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "trunk SDP refused for a private call");
                let cause = Cause::TrunkSdp {
                    code: 488,
                    reason: format!("trunk SDP refused for a private call: {e}"),
                };
                return self.end(c, cause, now);
            }
        };
        let mut params = outgoing_relay_params(
            offer,
            &trunk.answer,
            TrunkCrypto::Passthrough,
            c.media_source,
        );
        // The gateway cannot write into (or read) the encrypted stream.
        params.telephone_event = None;
        self.trunk_sdp = Some(sdp.to_string());
        if c.media_started {
            // A 200 after a 183 of the same private call: the browser's DTLS
            // association runs with the certificate it was given; another
            // one cannot be handed to it without a new offer.
            let first = self.private_fingerprint.as_ref();
            if first != Some(&trunk.fingerprint)
                || self.browser_codec != Some(trunk.answer.codec.pt)
            {
                let cause = Cause::TrunkSdp {
                    code: 488,
                    reason: "trunk changed its DTLS fingerprint or codec between 183 and 200 \
                             of a private call"
                        .into(),
                };
                return self.end(c, cause, now);
            }
            info!("trunk SDP changed: moving the private call's trunk leg");
            c.media(MediaCommand::UpdateTrunk(Box::new(TrunkUpdate {
                trunk: params.trunk,
                payload_map: params.payload_map,
                telephone_event: params.telephone_event,
            })));
            return;
        }
        c.trunk_security = "dtls-srtp (end to end)".into();
        self.private_fingerprint = Some(trunk.fingerprint.clone());
        self.browser_codec = Some(trunk.answer.codec.pt);
        c.codec = Some(codec_label(&trunk.answer.codec));
        let answer_params = BrowserAnswerParams {
            local_ip: c.media.public_ip,
            port: c.media.browser_port,
            ice_ufrag: c.media.ice_ufrag.clone(),
            ice_pwd: c.media.ice_pwd.expose().clone(),
            fingerprint_sha256: c.media.fingerprint_sha256.clone(),
            session_id: offer_params.session_id,
            session_version: 1,
            ssrc: None,
        };
        let browser_answer = match sdp::write_private_browser_answer(offer, &trunk, &answer_params)
        {
            Ok(sdp) => sdp,
            Err(e) => {
                let cause = Cause::TrunkSdp {
                    code: 488,
                    reason: format!("cannot answer the browser for a private call: {e}"),
                };
                return self.end(c, cause, now);
            }
        };
        info!(
            setup = trunk.setup.as_str(),
            "private call: the browser's DTLS peer is the trunk"
        );
        self.start_media(c, params, browser_answer, now);
    }
}

impl Incoming {
    /// The browser accepted a private incoming call: the relay starts in
    /// passthrough and the trunk gets the 200 with the browser's
    /// fingerprint and role.
    pub(super) fn accept_private(
        &mut self,
        c: &mut Common,
        answer: BrowserAnswer,
        browser_setup: Setup,
        now: Instant,
    ) {
        // No telephone-event: the gateway cannot write into (or read) the
        // encrypted stream.
        let params = self.relay_params(&answer, TrunkCrypto::Passthrough, c.media_source);
        let mut codecs = vec![answer.codec.clone()];
        codecs.extend(trunk_telephone_event(&self.offer, &answer));
        let sip_answer = match sdp::write_private_sip_answer(
            &self.offer,
            &codecs,
            c.media.public_ip,
            c.media.trunk_rtp_port,
            u64::from(rand::random::<u32>()),
            (&answer.fingerprint, browser_setup),
        ) {
            Ok(sdp) => sdp,
            Err(e) => {
                let cause =
                    Cause::BrowserSdp(format!("cannot answer the trunk for a private call: {e}"));
                return self.end(c, cause, now);
            }
        };
        info!(
            setup = browser_setup.as_str(),
            "private call: the trunk's DTLS peer is the browser; answering the trunk"
        );
        c.telephone_event = None;
        c.media(MediaCommand::Start(Box::new(params)));
        c.media_started = true;
        c.dtls_deadline = Some(now + c.timers.dtls);
        self.uas.answer(sip_answer, self.contact.clone(), now);
        self.answer = Some((answer, None));
        self.phase = Phase::Answered;
        c.ring_deadline = None;
        c.media(MediaCommand::SetTimeout(c.timers.answered_media));
    }
}
