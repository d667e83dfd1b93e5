//! Inbound calls (UAS) and the requests inside every call's dialog.

use std::sync::Arc;
use std::time::Instant;

use super::table::{Call, CallError, Calls, Deadline};
use super::{CallDirection, CallId, CallState, EndCause, Ended, Inbound, InboundAction, MediaOp};
use crate::sdp::{self, Direction, NegotiateError};
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::{Endpoint, Reply};
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::target::Target;
use crate::sip::transaction::TxnId;

impl Calls {
    /// Takes a new INVITE (from [`crate::sip::endpoint::Event::NewRequest`])
    /// and acts on `policy`: reject, ring, or answer. The call is in the
    /// table (and its events recorded) whatever the policy.
    pub fn incoming(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        txn: TxnId,
        request: Message,
        source: Target,
        policy: Inbound,
    ) -> Option<CallId> {
        let key = (
            request.call_id().unwrap_or_default().to_owned(),
            request
                .from_header()
                .ok()
                .and_then(|f| f.tag().map(str::to_owned))
                .unwrap_or_default(),
            request.cseq().map(|c| c.seq).unwrap_or(0),
        );
        if self.inbound_keys.contains_key(&key) {
            // The same INVITE by another path (RFC 3261 §8.2.2.2).
            let _ = ep.respond(now, txn, Reply::code(482, "Loop Detected"));
            return None;
        }
        let id = match self.admit() {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "inbound INVITE refused");
                let _ = ep.respond(now, txn, Reply::code(503, "Service Unavailable"));
                return None;
            }
        };
        let keys = match self.call_keys(policy.srtp) {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "inbound INVITE refused");
                let _ = ep.respond(now, txn, Reply::code(500, "Server Internal Error"));
                return None;
            }
        };
        ep.adopt(txn, Self::owner(id));
        let tag = ep.local_tag(txn).unwrap_or_default().to_owned();
        let call = Call {
            account: policy.account.clone(),
            srtp: policy.srtp,
            keys,
            invite: Some(txn),
            invite_cseq: request.cseq().map(|c| c.seq).unwrap_or(0),
            contact_user: policy.contact_user.clone(),
            source: Some(source),
            from: Arc::from(request.value(HeaderName::From).unwrap_or("")),
            to: Arc::from(request.value(HeaderName::To).unwrap_or("")),
            inbound_key: Some(key.clone()),
            ..Call::new(
                id,
                CallDirection::Inbound,
                now,
                request.call_id().unwrap_or_default().to_owned(),
                tag.clone(),
                source,
            )
        };
        self.insert(call);
        self.inbound_keys.insert(key, id);
        self.record_current(now, id);
        let dialog = Dialog::as_uas(&request, &tag, source);
        if let Some(c) = self.calls.get_mut(&id) {
            c.request = Some(request);
        }
        let dialog = match dialog {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(call = %id, error = %e, "INVITE cannot set up a dialog");
                self.respond_final(now, ep, id, 400, "Bad Request");
                self.finish(now, ep, id, Ended::remote(EndCause::Failed, Some(400)));
                return Some(id);
            }
        };
        ep.bind_dialog(dialog.key(), Self::owner(id));
        if let Some(c) = self.calls.get_mut(&id) {
            c.dialog = Some(dialog);
        }
        match policy.action {
            InboundAction::Reject(code) => {
                let code = if (300..700).contains(&code) {
                    code
                } else {
                    603
                };
                self.respond_final(now, ep, id, code, reason(code));
                self.finish(now, ep, id, Ended::local(EndCause::Rejected, Some(code)));
            }
            InboundAction::Ring => self.ring_inbound(now, ep, id),
            InboundAction::Answer => {
                if self.prepare_answer(now, ep, id) {
                    self.send_answer(now, ep, id);
                }
            }
        }
        Some(id)
    }

    /// Negotiates the offer (or makes one when the INVITE has none);
    /// false when the call was refused (488, no media port).
    fn prepare_answer(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) -> bool {
        let too_small = self
            .calls
            .get(&id)
            .and_then(|c| c.request.as_ref())
            .and_then(|r| self.uas_session(now, r).err());
        if let Some(min_se) = too_small {
            let reply = Reply::code(422, "Session Interval Too Small")
                .header("Min-SE", min_se.as_secs().to_string());
            let txn = self.calls.get_mut(&id).and_then(|c| {
                c.request = None;
                c.invite
            });
            if let Some(txn) = txn
                && let Err(e) = ep.respond(now, txn, reply)
            {
                tracing::debug!(call = %id, error = %e, "422 not sent");
            }
            self.finish(now, ep, id, Ended::local(EndCause::Incompatible, Some(422)));
            return false;
        }
        let media = match self.local_media(now, Direction::SendRecv) {
            Ok(m) => self.call_media(id, m.port, Direction::SendRecv),
            Err(e) => {
                tracing::warn!(call = %id, error = %e, "no media port for an inbound call");
                self.respond_final(now, ep, id, 503, "Service Unavailable");
                self.finish(
                    now,
                    ep,
                    id,
                    Ended::local(EndCause::MediaPortsExhausted, Some(503)),
                );
                return false;
            }
        };
        let origin = self.origin();
        let Some(c) = self.calls.get_mut(&id) else {
            return false;
        };
        c.media_port = Some(media.port);
        self.media_ops.push(MediaOp::Open {
            call: id,
            name: c.name.clone(),
            port: media.port,
        });
        let offer = c.request.as_ref().and_then(Self::sdp_of);
        match offer {
            None => {
                // Late offer: we offer in the 2xx, the answer comes in the ACK.
                c.local_sdp = Some(sdp::offer(&media, origin));
                true
            }
            Some(offer) => match sdp::answer(&offer, &media, origin) {
                Ok((answer, negotiated)) => {
                    c.local_sdp = Some(answer);
                    c.negotiated = Some(negotiated);
                    true
                }
                Err(e) => {
                    tracing::info!(call = %id, error = %e, "offer refused");
                    let (code, cause) = match e {
                        NegotiateError::SrtpRequired => (488, EndCause::SrtpRequired),
                        _ => (488, EndCause::Incompatible),
                    };
                    self.respond_final(now, ep, id, code, "Not Acceptable Here");
                    self.finish(now, ep, id, Ended::local(cause, Some(code)));
                    false
                }
            },
        }
    }

    fn provisional(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        code: u16,
        reason: &str,
    ) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let (Some(txn), Some(request), Some(source)) = (c.invite, c.request.as_ref(), c.source)
        else {
            return;
        };
        let reply = Self::reply_for(ep, &c.contact_user, request, source, code, reason);
        if let Err(e) = ep.respond(now, txn, reply) {
            tracing::debug!(call = %id, code, error = %e, "provisional response not sent");
        }
    }

    fn send_answer(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) {
        let session = self
            .calls
            .get(&id)
            .and_then(|c| c.request.as_ref())
            .and_then(|r| self.uas_session(now, r).ok().flatten());
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let (Some(txn), Some(request), Some(source)) = (c.invite, c.request.take(), c.source)
        else {
            return;
        };
        let mut reply = Self::reply_for(ep, &c.contact_user, &request, source, 200, "OK");
        if let Some((timer, value)) = session {
            if request.supported().any(|t| t.eq_ignore_ascii_case("timer")) {
                reply = reply.header("Require", "timer");
            }
            reply = reply.header("Session-Expires", value);
            c.session = Some(timer);
        }
        c.max_at = Some(now + c.max_duration);
        if let Some(sdp) = &c.local_sdp {
            reply = reply.body("application/sdp", sdp.to_string().into_bytes());
        }
        match ep.respond(now, txn, reply) {
            Ok(()) => {
                self.transition(now, id, CallState::Answered, Some(200));
                self.arm_answered(id);
            }
            Err(e) => {
                tracing::debug!(call = %id, error = %e, "200 not sent");
                self.finish(now, ep, id, Ended::local(EndCause::Transport, None));
            }
        }
    }

    /// Rings an inbound call (180) until it is answered or the answer
    /// timeout passes.
    pub(super) fn ring_inbound(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) {
        let prepared = self.calls.get(&id).is_some_and(|c| c.local_sdp.is_some());
        if prepared || self.prepare_answer(now, ep, id) {
            self.provisional(now, ep, id, 180, "Ringing");
            self.transition(now, id, CallState::Ringing, Some(180));
            let at = now + self.config.answer_timeout;
            self.set_deadline(id, at, Deadline::Answer);
        }
    }

    /// Sends early media to an unanswered inbound call: 183 with our SDP.
    pub(super) fn early_media_inbound(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let (Some(txn), Some(request), Some(source), Some(sdp)) =
            (c.invite, c.request.as_ref(), c.source, c.local_sdp.as_ref())
        else {
            return;
        };
        let reply = Self::reply_for(
            ep,
            &c.contact_user,
            request,
            source,
            183,
            "Session Progress",
        )
        .body("application/sdp", sdp.to_string().into_bytes());
        if let Err(e) = ep.respond(now, txn, reply) {
            tracing::debug!(call = %id, error = %e, "183 not sent");
            return;
        }
        self.transition(now, id, CallState::EarlyMedia, Some(183));
        if self.calls.get(&id).is_some_and(|c| c.deadline.is_none()) {
            let at = now + self.config.answer_timeout;
            self.set_deadline(id, at, Deadline::Answer);
        }
    }

    /// Answers an unanswered inbound call now (negotiating first if that
    /// was not done).
    pub(super) fn answer_now(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) -> bool {
        let prepared = self.calls.get(&id).is_some_and(|c| c.local_sdp.is_some());
        if !prepared && !self.prepare_answer(now, ep, id) {
            return false;
        }
        self.send_answer(now, ep, id);
        true
    }

    /// Answers a ringing inbound call.
    pub fn answer(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) -> Result<(), CallError> {
        let c = self.calls.get(&id).ok_or(CallError::Unknown(id))?;
        if c.direction != CallDirection::Inbound
            || !matches!(c.state, CallState::Ringing | CallState::EarlyMedia)
        {
            return Err(CallError::WrongState {
                call: id,
                state: c.state,
                action: "answer",
            });
        }
        self.send_answer(now, ep, id);
        self.bridge_progress(now, ep, id);
        Ok(())
    }

    /// Rejects a ringing inbound call with `code` (3xx-6xx).
    pub fn reject(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        code: u16,
    ) -> Result<(), CallError> {
        let c = self.calls.get(&id).ok_or(CallError::Unknown(id))?;
        if c.direction != CallDirection::Inbound || c.state != CallState::Ringing {
            return Err(CallError::WrongState {
                call: id,
                state: c.state,
                action: "reject",
            });
        }
        let code = if (300..700).contains(&code) {
            code
        } else {
            603
        };
        self.respond_final(now, ep, id, code, reason(code));
        self.finish(now, ep, id, Ended::local(EndCause::Rejected, Some(code)));
        Ok(())
    }

    /// A request in a call's dialog (or the ACK of our 2xx).
    pub(super) fn on_in_dialog(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        txn: Option<TxnId>,
        request: &Message,
        source: Target,
    ) {
        tracing::debug!(call = %id, method = ?request.method(), "in-dialog request");
        let Some(c) = self.calls.get_mut(&id) else {
            if let Some(txn) = txn {
                let _ = ep.respond(
                    now,
                    txn,
                    Reply::code(481, "Call/Transaction Does Not Exist"),
                );
            }
            return;
        };
        let Some(dialog) = c.dialog.as_mut() else {
            return;
        };
        if let Err(e) = dialog.receive(request) {
            tracing::debug!(call = %id, error = %e, "in-dialog request refused");
            if let Some(txn) = txn {
                let _ = ep.respond(now, txn, Reply::code(500, "Server Internal Error"));
            }
            return;
        }
        let method = request.method();
        let Some(txn) = txn else {
            // The ACK of our 2xx: the dialog is confirmed; a late offer's
            // answer comes in it.
            if method == Some(Method::Ack) {
                dialog.confirmed = true;
                if c.negotiated.is_none()
                    && let (Some(offer), Some(answer)) =
                        (c.local_sdp.as_ref(), Self::sdp_of(request))
                {
                    c.negotiated = sdp::accept_answer(offer, &answer).ok();
                    self.media_negotiated(id);
                }
            }
            return;
        };
        match method {
            Some(Method::Bye) => {
                let _ = ep.respond(now, txn, Reply::code(200, "OK"));
                let ended = c
                    .pending_end
                    .unwrap_or(Ended::remote(EndCause::Normal, None));
                self.finish(now, ep, id, ended);
            }
            Some(Method::Invite) | Some(Method::Update) => {
                self.on_peer_reinvite(now, ep, id, txn, request, source);
            }
            Some(Method::Info) => {
                let _ = ep.respond(now, txn, Reply::code(200, "OK"));
                self.on_peer_info(id, request);
            }
            Some(Method::Options) => {
                let _ = ep.respond(now, txn, Reply::code(200, "OK"));
            }
            _ => {
                let reply = Reply::code(501, "Not Implemented")
                    .header("Allow", crate::sip::endpoint::ALLOW);
                let _ = ep.respond(now, txn, reply);
            }
        }
    }
}

/// A reason phrase for a status we send.
fn reason(code: u16) -> &'static str {
    match code {
        404 => "Not Found",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        488 => "Not Acceptable Here",
        503 => "Service Unavailable",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Rejected",
    }
}
