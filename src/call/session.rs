//! After the answer: session timers (RFC 4028), our own re-INVITEs (a
//! refresh, hold and unhold) with 491 glare handling, and the deadline of
//! an answered call (the nearest of its maximum duration, its refresh and
//! its session expiry).

use std::time::{Duration, Instant};

use super::table::{CallError, Calls, Deadline};
use super::{CallDirection, CallId, CallState, EndCause, Ended};
use crate::sdp::{self, Direction};
use crate::sip::endpoint::{Endpoint, OutRequest, Reply};
use crate::sip::message::Message;
use crate::sip::transaction::TxnId;

/// A negotiated session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SessionTimer {
    /// The session interval.
    pub(super) interval: Duration,
    /// Whether we send the refreshes (else we expect them).
    pub(super) we_refresh: bool,
    /// When the session was last refreshed.
    pub(super) since: Instant,
}

impl SessionTimer {
    /// When we refresh (half the interval) or give up waiting for the
    /// peer's refresh (RFC 4028 §10: the interval less a third, at most
    /// 32 s less).
    fn due(&self) -> (Instant, Deadline) {
        if self.we_refresh {
            (self.since + self.interval / 2, Deadline::SessionRefresh)
        } else {
            let margin = (self.interval / 3).min(Duration::from_secs(32));
            (
                self.since + self.interval - margin,
                Deadline::SessionExpired,
            )
        }
    }
}

/// What one of our re-INVITEs is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A session refresh.
    Refresh,
    /// Hold (`true`) or unhold (`false`).
    Hold(bool),
}

/// One of our re-INVITEs in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReInvite {
    pub(super) txn: TxnId,
    pub(super) cseq: u32,
    pub(super) purpose: Purpose,
}

/// `Session-Expires` of `msg`: seconds and whether the `refresher` is the
/// UAC of that transaction (`None`: not said).
fn session_expires(msg: &Message) -> Option<(u32, Option<bool>)> {
    let se = msg.session_expires().ok()?;
    let refresher = se
        .params
        .get("refresher")
        .flatten()
        .map(|r| r.eq_ignore_ascii_case("uac"));
    Some((se.secs, refresher))
}

impl Calls {
    /// The headers of an INVITE of ours that asks for a session timer.
    pub(super) fn session_headers(
        &self,
        refresher_uac: bool,
        at_least: Option<Duration>,
    ) -> Vec<(&'static str, String)> {
        match self.config.session_expires {
            Some(se) => {
                let se = at_least.map_or(se, |min| se.max(min));
                vec![
                    ("Supported", "timer".to_owned()),
                    (
                        "Session-Expires",
                        if refresher_uac {
                            format!("{};refresher=uac", se.as_secs())
                        } else {
                            se.as_secs().to_string()
                        },
                    ),
                    (
                        "Min-SE",
                        self.config
                            .min_se
                            .max(at_least.unwrap_or_default())
                            .as_secs()
                            .to_string(),
                    ),
                ]
            }
            None => Vec::new(),
        }
    }

    /// UAC: the session timer a 2xx to our INVITE sets up. Without a
    /// Session-Expires in the 2xx (a peer without timers) we refresh
    /// ourselves, so that a peer that vanishes is still found out.
    pub(super) fn uac_session(&self, now: Instant, response: &Message) -> Option<SessionTimer> {
        let asked = self.config.session_expires?;
        let (interval, we_refresh) = match session_expires(response) {
            Some((secs, refresher_uac)) if secs > 0 => (
                Duration::from_secs(u64::from(secs)),
                refresher_uac.unwrap_or(true),
            ),
            _ => (asked, true),
        };
        Some(SessionTimer {
            interval,
            we_refresh,
            since: now,
        })
    }

    /// UAS: the session timer for an INVITE (or a refresh) we answer, and
    /// the Session-Expires value our 2xx carries; `Err(min_se)` when the
    /// peer asked for less than our minimum (422).
    pub(super) fn uas_session(
        &self,
        now: Instant,
        request: &Message,
    ) -> Result<Option<(SessionTimer, String)>, Duration> {
        let Some(ours) = self.config.session_expires else {
            return Ok(None);
        };
        let peer_supports = request.supported().any(|t| t.eq_ignore_ascii_case("timer"));
        let (interval, refresher_uac) = match session_expires(request) {
            Some((secs, refresher)) => {
                let asked = Duration::from_secs(u64::from(secs));
                if asked < self.config.min_se {
                    return Err(self.config.min_se);
                }
                // The peer refreshes when it said so, or when it supports
                // timers and left the choice to us.
                (asked, refresher.unwrap_or(peer_supports))
            }
            None => (ours, false),
        };
        let value = format!(
            "{};refresher={}",
            interval.as_secs(),
            if refresher_uac { "uac" } else { "uas" }
        );
        Ok(Some((
            SessionTimer {
                interval,
                we_refresh: !refresher_uac,
                since: now,
            },
            value,
        )))
    }

    /// Arms an answered call's one deadline: the nearest of its maximum
    /// duration, its refresh and its session expiry.
    pub(super) fn arm_answered(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let mut next = c.max_at.map(|at| (at, Deadline::MaxDuration));
        if let Some((at, kind)) = c.session.map(|s| s.due())
            && next.is_none_or(|(n, _)| at < n)
        {
            next = Some((at, kind));
        }
        if let Some((at, kind)) = c.glare_retry.map(|(at, _)| (at, Deadline::Glare))
            && next.is_none_or(|(n, _)| at < n)
        {
            next = Some((at, kind));
        }
        if let Some((at, kind)) = next {
            self.set_deadline(id, at, kind);
        }
    }

    /// Puts a call on hold (`sendonly`) or takes it off (`sendrecv`) with a
    /// re-INVITE.
    pub fn hold(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        on: bool,
    ) -> Result<(), CallError> {
        let c = self.calls.get(&id).ok_or(CallError::Unknown(id))?;
        if !matches!(c.state, CallState::Answered | CallState::Bridged) || c.reinvite.is_some() {
            return Err(CallError::WrongState {
                call: id,
                state: c.state,
                action: if on { "hold" } else { "unhold" },
            });
        }
        self.reinvite(now, ep, id, Purpose::Hold(on));
        Ok(())
    }

    /// Sends a re-INVITE with our current (or new-direction) offer.
    pub(super) fn reinvite(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        purpose: Purpose,
    ) {
        let user_agent = self.config.user_agent.clone();
        let session = self.session_headers(true, None);
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let (Some(d), Some(sdp)) = (c.dialog.as_mut(), c.local_sdp.as_ref()) else {
            return;
        };
        let offer = match purpose {
            Purpose::Hold(on) => sdp.with_direction(if on {
                Direction::SendOnly
            } else {
                Direction::SendRecv
            }),
            Purpose::Refresh => sdp.clone(),
        };
        let mut req = d.request("INVITE");
        let cseq = d.local_cseq;
        req.push("Allow", crate::sip::endpoint::ALLOW);
        req.push("User-Agent", &user_agent);
        for (name, value) in &session {
            req.push(name, value);
        }
        let req = req.body("application/sdp", offer.to_string().into_bytes());
        let hop = d.next_hop;
        let request = OutRequest::new(req).with_contact(crate::sip::endpoint::ContactSpec {
            user: c.contact_user.clone(),
            params: String::new(),
        });
        match ep.send_request(now, Self::owner(id), request, hop) {
            Ok(txn) => {
                c.reinvite = Some(ReInvite { txn, cseq, purpose });
                c.offered = Some(offer);
                c.glare_retry = None;
            }
            Err(e) => {
                tracing::debug!(call = %id, error = %e, "re-INVITE not sent");
                let ended = Ended::local(EndCause::Transport, None);
                self.bye(now, ep, id, ended);
            }
        }
    }

    /// A response to one of our re-INVITEs.
    pub(super) fn on_reinvite_response(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        response: &Message,
    ) {
        let Some(code) = response.status() else {
            return;
        };
        if code < 200 {
            return;
        }
        let uac_session = (200..300)
            .contains(&code)
            .then(|| self.uac_session(now, response))
            .flatten();
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(re) = c.reinvite.take() else {
            return;
        };
        let offered = c.offered.take();
        match code {
            200..=299 => {
                if let Some(d) = c.dialog.as_mut() {
                    d.refresh_target(response);
                    let ack = OutRequest::new(d.ack(re.cseq));
                    let tag = d.remote_tag.clone();
                    let hop = d.next_hop;
                    if let Err(e) = ep.send_ack(now, Self::owner(id), re.txn, &tag, ack, hop) {
                        tracing::debug!(call = %id, error = %e, "ACK of a re-INVITE not sent");
                    }
                }
                if let (Some(offer), Some(answer)) = (offered, Self::sdp_of(response)) {
                    if let Ok(n) = sdp::accept_answer(&offer, &answer) {
                        c.negotiated = Some(n);
                    }
                    c.local_sdp = Some(offer);
                }
                if let Purpose::Hold(on) = re.purpose {
                    c.held = on;
                }
                if c.session.is_some() || uac_session.is_some() {
                    c.session = uac_session;
                }
                self.arm_answered(id);
                self.media_negotiated(id);
            }
            491 => {
                // Glare (RFC 3261 §14.1): try again after a random wait,
                // 2.1-4 s as the Call-ID's owner, 0-2 s otherwise.
                let r = self.rng.next_u64() % 1000;
                let wait = if c.direction == CallDirection::Outbound {
                    Duration::from_millis(2100 + r * 19 / 10)
                } else {
                    Duration::from_millis(r * 2)
                };
                c.glare_retry = Some((now + wait, re.purpose));
                self.arm_answered(id);
            }
            408 | 481 => {
                // The dialog is gone (RFC 3261 §14.1).
                let cause = if re.purpose == Purpose::Refresh {
                    EndCause::SessionTimer
                } else {
                    EndCause::Failed
                };
                self.bye(now, ep, id, Ended::remote(cause, Some(code)));
            }
            _ => {
                // Refused: the session goes on as it was.
                if re.purpose == Purpose::Refresh {
                    if let Some(s) = c.session.as_mut() {
                        s.since = now;
                    }
                    self.arm_answered(id);
                }
            }
        }
    }

    /// One of our re-INVITEs got no final response.
    pub(super) fn on_reinvite_failed(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(re) = c.reinvite.take() else {
            return;
        };
        let cause = if re.purpose == Purpose::Refresh {
            EndCause::SessionTimer
        } else {
            EndCause::Timeout
        };
        self.bye(now, ep, id, Ended::local(cause, Some(408)));
    }

    /// A session deadline passed: refresh now, or end the call whose peer
    /// did not refresh.
    pub(super) fn session_due(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        kind: Deadline,
    ) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        match kind {
            Deadline::SessionRefresh if c.reinvite.is_none() => {
                if let Some(s) = c.session.as_mut() {
                    // Until the refresh is answered, the peer's expiry holds.
                    s.since = now;
                    s.we_refresh = false;
                }
                self.reinvite(now, ep, id, Purpose::Refresh);
                self.arm_answered(id);
            }
            Deadline::SessionRefresh => self.arm_answered(id),
            Deadline::SessionExpired => {
                tracing::info!(call = %id, "no session refresh in time; ending the call");
                self.bye(now, ep, id, Ended::local(EndCause::SessionTimer, None));
            }
            Deadline::Glare => {
                let purpose = c.glare_retry.take().map(|(_, p)| p);
                if let Some(purpose) = purpose {
                    self.reinvite(now, ep, id, purpose);
                }
                self.arm_answered(id);
            }
            _ => {}
        }
    }

    /// A re-INVITE or UPDATE from the peer: 491 while ours is in flight,
    /// 422 below our Min-SE, else 200 with our answer and the session
    /// timer renewed.
    pub(super) fn on_peer_reinvite(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        id: CallId,
        txn: TxnId,
        request: &Message,
        source: crate::sip::target::Target,
    ) {
        let is_invite = request.method() == Some(crate::sip::message::Method::Invite);
        let session = self.uas_session(now, request);
        let port = self.calls.get(&id).and_then(|c| c.media_port).unwrap_or(0);
        let media = self.call_media(id, port, Direction::SendRecv);
        let address = self.config.media_address;
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if is_invite && c.reinvite.is_some() {
            let _ = ep.respond(now, txn, Reply::code(491, "Request Pending"));
            return;
        }
        let (timer, se_value) = match session {
            Ok(Some((timer, value))) => (Some(timer), Some(value)),
            Ok(None) => (None, None),
            Err(min_se) => {
                let reply = Reply::code(422, "Session Interval Too Small")
                    .header("Min-SE", min_se.as_secs().to_string());
                let _ = ep.respond(now, txn, reply);
                return;
            }
        };
        if let Some(d) = c.dialog.as_mut() {
            d.refresh_target(request);
        }
        let mut reply = Self::reply_for(ep, &c.contact_user, request, source, 200, "OK");
        if let Some(value) = se_value {
            reply = reply
                .header("Require", "timer")
                .header("Session-Expires", value);
        }
        match Self::sdp_of(request) {
            Some(offer) => {
                let mut origin = c
                    .local_sdp
                    .as_ref()
                    .map(|s| s.origin.clone())
                    .unwrap_or_else(|| sdp::Origin::new("dialerd", 1, 1, address));
                origin.session_version = origin.session_version.wrapping_add(1);
                match sdp::answer(&offer, &media, origin) {
                    Ok((answer, negotiated)) => {
                        reply = reply.body("application/sdp", answer.to_string().into_bytes());
                        c.local_sdp = Some(answer);
                        c.negotiated = Some(negotiated);
                    }
                    Err(_) => {
                        let _ = ep.respond(now, txn, Reply::code(488, "Not Acceptable Here"));
                        return;
                    }
                }
            }
            None if is_invite => {
                // An offerless re-INVITE: we offer our current description.
                if let Some(sdp) = &c.local_sdp {
                    reply = reply.body("application/sdp", sdp.to_string().into_bytes());
                }
            }
            None => {}
        }
        if let Err(e) = ep.respond(now, txn, reply) {
            tracing::debug!(call = %id, error = %e, "response to a re-INVITE or UPDATE not sent");
        }
        if timer.is_some() {
            c.session = timer;
        }
        self.arm_answered(id);
        self.media_negotiated(id);
    }
}
