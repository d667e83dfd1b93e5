//! Outbound calls (UAC): INVITE with an offer, digest on 401/407,
//! provisional responses, the first 2xx wins, later forked 2xx are
//! acknowledged and ended, ring timeout and Timer C cancel, and a 2xx that
//! crosses our CANCEL is acknowledged and ended with BYE.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::table::{Call, CallError, Calls, Deadline};
use super::{CallDirection, CallId, CallState, EndCause, Ended, MediaOp, Originate};
use crate::sdp::{self, Direction};
use crate::sip::auth::{self, Attempt, Challenge};
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::{ContactSpec, Endpoint, OutRequest};
use crate::sip::ids;
use crate::sip::message::{Message, OutMessage};
use crate::sip::transaction::TxnId;

impl Calls {
    /// Places a call: sends the INVITE with an SDP offer now.
    pub fn originate(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        origin: Originate,
    ) -> Result<CallId, CallError> {
        if let Some((name, _)) = origin
            .headers
            .iter()
            .find(|(n, _)| !n.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-")))
        {
            return Err(CallError::Header(name.clone()));
        }
        if let Some(asked) = origin.ring_timeout
            && asked < self.config.min_ring
        {
            return Err(CallError::RingBelowFloor {
                asked_secs: asked.as_secs(),
                floor_secs: self.config.min_ring.as_secs(),
            });
        }
        self.admit_outbound(
            now,
            origin.account.as_deref(),
            origin.name.as_deref(),
            origin.campaign.as_ref(),
        )?;
        let keys = self.call_keys(origin.srtp)?;
        let id = self.admit()?;
        let media = self
            .local_media(now, Direction::SendRecv)?
            .with_srtp(origin.srtp, keys.clone());
        let sdp_origin = self.origin();
        let offer = sdp::offer(&media, sdp_origin);
        let host = origin.next_hop.addr.ip().to_string();
        let sip_call_id = ids::call_id_from(self.rng.as_mut(), &host);
        let local_tag = self.token();
        let next_hop = origin.next_hop;
        let call = Call {
            name: origin
                .name
                .as_deref()
                .map_or_else(|| Arc::from(""), Arc::from),
            max_duration: origin.max_duration.unwrap_or_default(),
            account: origin.account.clone(),
            ring_deadline: Some(now + origin.ring_timeout.unwrap_or(self.config.ring_timeout)),
            from: Arc::from(origin.from_uri.as_str()),
            to: Arc::from(origin.to.as_str()),
            contact_user: origin.contact_user.clone(),
            local_sdp: Some(offer),
            media_port: Some(media.port),
            srtp: origin.srtp,
            keys,
            origin: Some(origin),
            ..Call::new(
                id,
                CallDirection::Outbound,
                now,
                sip_call_id,
                local_tag,
                next_hop,
            )
        };
        self.insert(call);
        if let Some(c) = self.calls.get(&id) {
            self.media_ops.push(MediaOp::Open {
                call: id,
                name: c.name.clone(),
                port: media.port,
            });
        }
        self.record_current(now, id);
        self.send_invite(now, ep, id, None)?;
        Ok(id)
    }

    /// Sends (or, after a challenge, sends again) the call's INVITE.
    fn send_invite(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        challenge: Option<&Challenge>,
    ) -> Result<(), CallError> {
        let user_agent = self.config.user_agent.clone();
        let cnonce = self.token();
        let at_least = self.calls.get(&id).and_then(|c| c.min_se_asked);
        let session = self.session_headers(false, at_least);
        let Some(c) = self.calls.get_mut(&id) else {
            return Err(CallError::Unknown(id));
        };
        let Some(o) = c.origin.as_ref() else {
            return Err(CallError::Unknown(id));
        };
        c.invite_cseq += 1;
        let mut invite = OutMessage::request("INVITE", &o.to);
        if let Some(route) = &o.route {
            invite.push("Route", route);
        }
        invite.push("Max-Forwards", "70");
        let from = match &o.display {
            Some(d) => format!(
                "\"{}\" <{}>;tag={}",
                d.replace(['"', '\\'], ""),
                o.from_uri,
                c.local_tag
            ),
            None => format!("<{}>;tag={}", o.from_uri, c.local_tag),
        };
        invite.push("From", from);
        invite.push("To", format!("<{}>", o.to));
        invite.push("Call-ID", &c.sip_call_id);
        invite.push("CSeq", format!("{} INVITE", c.invite_cseq));
        invite.push("Allow", crate::sip::endpoint::ALLOW);
        invite.push("User-Agent", &user_agent);
        for (name, value) in &session {
            invite.push(name, value);
        }
        if let Some(pai) = &o.asserted_identity {
            invite.push("P-Asserted-Identity", pai);
        }
        for (name, value) in &o.headers {
            invite.push(name, value);
        }
        if let (Some(ch), Some(cred)) = (challenge, &o.credentials) {
            c.nc += 1;
            let value = auth::credentials(
                ch,
                &Attempt {
                    username: &cred.username,
                    password: &cred.password,
                    method: "INVITE",
                    uri: &o.to,
                    body: b"",
                    nc: c.nc,
                    cnonce: &cnonce,
                },
            );
            invite.push(ch.answer_header(), value);
            c.answered_nonce = Some(ch.nonce.clone());
        }
        let body = c
            .local_sdp
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let invite = invite.body("application/sdp", body.into_bytes());
        let request = OutRequest::new(invite).with_contact(ContactSpec {
            user: c.contact_user.clone(),
            params: String::new(),
        });
        let hop = c.next_hop;
        match ep.send_request(now, Self::owner(id), request, hop) {
            Ok(txn) => {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.invite = Some(txn);
                }
                self.transition(now, id, CallState::Dialing, None);
                self.ring_or_timer_c(now, id);
                Ok(())
            }
            Err(e) => {
                let text = e.to_string();
                self.finish(now, ep, id, Ended::local(EndCause::Transport, None));
                Err(CallError::Send(text))
            }
        }
    }

    /// Cancels the INVITE; the call ends with `ended` when it completes
    /// (487, or a 2xx that crossed the CANCEL, acknowledged and ended with
    /// BYE).
    pub(super) fn cancel_invite(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        ended: Ended,
    ) {
        let ending = self.config.ending;
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if c.direction != CallDirection::Outbound {
            return;
        }
        // A cause given before (`end_with`: media timeout, agent failure,
        // shutdown) is the one the call ends with.
        let ended = *c.pending_end.get_or_insert(ended);
        let Some(invite) = c.invite else {
            self.finish(now, ep, id, ended);
            return;
        };
        if let Err(e) = ep.cancel(now, invite) {
            tracing::debug!(call = %id, error = %e, "CANCEL not sent; giving up the INVITE");
            ep.abandon(now, invite);
            self.finish(now, ep, id, ended);
            return;
        }
        self.transition(now, id, CallState::Ending, None);
        self.set_deadline(id, now + ending, Deadline::Ending);
    }

    pub(super) fn on_response(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        txn: TxnId,
        response: &Message,
    ) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let Some(code) = response.status() else {
            return;
        };
        if c.bye == Some(txn) {
            if code >= 200 {
                let ended = c
                    .pending_end
                    .unwrap_or(Ended::local(EndCause::Normal, None));
                self.finish(now, ep, id, ended);
            }
            return;
        }
        if c.reinvite.is_some_and(|r| r.txn == txn) {
            self.on_reinvite_response(now, ep, id, response);
            return;
        }
        if self.on_info_response(now, ep, id, txn, code) {
            return;
        }
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        if c.invite != Some(txn) {
            // A CANCEL's response, or the BYE of a forked 2xx.
            return;
        }
        match code {
            100..=199 => self.on_provisional(now, id, code, response),
            200..=299 => self.on_success(now, ep, id, txn, response),
            _ => self.on_failure_response(now, ep, id, code, response),
        }
    }

    fn on_provisional(&mut self, now: Instant, id: CallId, code: u16, response: &Message) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if c.state == CallState::Ending {
            return;
        }
        if c.dialog.is_none()
            && let Ok(d) = Dialog::as_uac(response, c.invite_cseq, c.next_hop)
        {
            c.dialog = Some(d);
        }
        let early = Self::sdp_of(response).and_then(|answer| {
            let offer = c.local_sdp.as_ref()?;
            sdp::accept_answer(offer, &answer).ok()
        });
        let state = match (code, early) {
            (100, _) => c.state,
            (_, Some(n)) => {
                c.negotiated = Some(n);
                CallState::EarlyMedia
            }
            (_, None) if c.state == CallState::EarlyMedia => CallState::EarlyMedia,
            (_, None) => CallState::Ringing,
        };
        self.transition(now, id, state, Some(code));
        // Timer C restarts with every provisional response.
        self.ring_or_timer_c(now, id);
    }

    fn on_success(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        txn: TxnId,
        response: &Message,
    ) {
        let user_agent = self.config.user_agent.clone();
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let tag = response
            .to_header()
            .ok()
            .and_then(|t| t.tag())
            .unwrap_or("")
            .to_owned();
        let winner = c
            .dialog
            .as_ref()
            .filter(|d| d.confirmed)
            .map(|d| d.remote_tag.clone());
        if let Some(winner) = winner {
            if winner != tag {
                // A forked 2xx after the first: acknowledge and end it.
                if let Ok(mut other) = Dialog::as_uac(response, c.invite_cseq, c.next_hop) {
                    let ack = OutRequest::new(other.ack(c.invite_cseq));
                    let _ = ep.send_ack(now, Self::owner(id), txn, &tag, ack, other.next_hop);
                    let mut bye = other.request("BYE");
                    bye.push("User-Agent", &user_agent);
                    let _ =
                        ep.send_request(now, Self::owner(id), OutRequest::new(bye), other.next_hop);
                }
            }
            return;
        }
        let mut dialog = match c.dialog.take() {
            Some(mut d) if d.remote_tag == tag => match d.confirm(response) {
                Ok(()) => d,
                Err(_) => return self.unroutable_2xx(now, ep, id),
            },
            _ => match Dialog::as_uac(response, c.invite_cseq, c.next_hop) {
                Ok(d) => d,
                Err(_) => return self.unroutable_2xx(now, ep, id),
            },
        };
        dialog.confirmed = true;
        let ack = OutRequest::new(dialog.ack(c.invite_cseq));
        if let Err(e) = ep.send_ack(now, Self::owner(id), txn, &tag, ack, dialog.next_hop) {
            tracing::debug!(call = %id, error = %e, "ACK not sent");
        }
        ep.bind_dialog(dialog.key(), Self::owner(id));
        let answered = Self::sdp_of(response).and_then(|answer| {
            let offer = c.local_sdp.as_ref()?;
            Some(sdp::accept_answer(offer, &answer))
        });
        let mut refused = None;
        match answered {
            Some(Ok(n)) => c.negotiated = Some(n),
            Some(Err(e)) => {
                tracing::info!(call = %id, error = %e, "answer refused");
                refused = Some(e);
            }
            None => {}
        }
        let usable = c.negotiated.is_some();
        c.dialog = Some(dialog);
        if let Some(ended) = c.pending_end {
            // The 2xx crossed our CANCEL: acknowledged above, ended now.
            self.bye(now, ep, id, ended);
            return;
        }
        let session = self.uac_session(now, response);
        self.transition(now, id, CallState::Answered, response.status());
        if let Some(c) = self.calls.get_mut(&id) {
            c.max_at = Some(now + c.max_duration);
            c.session = session;
        }
        if usable {
            self.arm_answered(id);
        } else {
            let cause = match refused {
                Some(sdp::NegotiateError::SrtpRequired) => EndCause::SrtpRequired,
                _ => EndCause::Incompatible,
            };
            self.bye(now, ep, id, Ended::local(cause, None));
        }
    }

    /// A 2xx without a usable Contact: nothing can reach the peer.
    fn unroutable_2xx(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) {
        tracing::warn!(call = %id, "2xx without a usable Contact; ending the call");
        self.finish(now, ep, id, Ended::remote(EndCause::Failed, None));
    }

    fn on_failure_response(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        code: u16,
        response: &Message,
    ) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        if let Some(ended) = c.pending_end {
            self.finish(
                now,
                ep,
                id,
                Ended {
                    code: Some(code),
                    ..ended
                },
            );
            return;
        }
        if code == 422
            && c.min_se_asked.is_none()
            && let Some(min_se) = response
                .value(crate::sip::message::HeaderName::MinSe)
                .and_then(|v| v.trim().split(';').next()?.trim().parse::<u64>().ok())
        {
            // Session interval too small (RFC 4028 §7.4): ask again with
            // the peer's minimum.
            if let Some(c) = self.calls.get_mut(&id) {
                c.min_se_asked = Some(Duration::from_secs(min_se));
                c.dialog = None;
            }
            if let Err(e) = self.send_invite(now, ep, id, None) {
                tracing::debug!(call = %id, error = %e, "INVITE after 422 not sent");
            }
            return;
        }
        if matches!(code, 401 | 407) {
            let has_credentials = c.origin.as_ref().is_some_and(|o| o.credentials.is_some());
            match Challenge::best_of(response) {
                Ok(ch) if has_credentials && (ch.stale || c.answered_nonce.is_none()) => {
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.nc = 0;
                        c.dialog = None;
                    }
                    if let Err(e) = self.send_invite(now, ep, id, Some(&ch)) {
                        tracing::debug!(call = %id, error = %e, "INVITE with credentials not sent");
                    }
                    return;
                }
                _ => {
                    self.finish(now, ep, id, Ended::remote(EndCause::AuthFailed, Some(code)));
                    return;
                }
            }
        }
        self.finish(
            now,
            ep,
            id,
            Ended::remote(EndCause::from_status(code), Some(code)),
        );
    }
}
