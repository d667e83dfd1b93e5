//! Bridges: two legs joined (an inbound leg to an outbound one, or two
//! outbound legs). An unanswered inbound leg is answered when its peer
//! answers, and hears its peer's early media (a 183 with our SDP) when that
//! is configured; when one leg ends, the other is ended with cause
//! `bridge_peer` (an unanswered inbound leg gets the final status that
//! ended its peer). The media layer relays between the legs' ports.

use std::time::Instant;

use super::table::{CallError, Calls};
use super::{CallDirection, CallId, CallState, EndCause, Ended, MediaOp};
use crate::sip::endpoint::Endpoint;

impl Calls {
    /// Joins legs `a` and `b`. Both must be live, not ending and not in
    /// another bridge; an unanswered inbound leg is answered as soon as the
    /// other leg is.
    pub fn bridge(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        a: CallId,
        b: CallId,
    ) -> Result<(), CallError> {
        for (id, other) in [(a, b), (b, a)] {
            let c = self.calls.get(&id).ok_or(CallError::Unknown(id))?;
            if id == other
                || c.bridge.is_some()
                || matches!(c.state, CallState::Ending | CallState::Ended)
            {
                return Err(CallError::WrongState {
                    call: id,
                    state: c.state,
                    action: "bridge",
                });
            }
        }
        for (id, other) in [(a, b), (b, a)] {
            if let Some(c) = self.calls.get_mut(&id) {
                c.bridge = Some(other);
            }
        }
        self.media_ops.push(MediaOp::Connect { a, b });
        self.bridge_progress(now, ep, a);
        self.bridge_progress(now, ep, b);
        Ok(())
    }

    /// The bridge peer of `id`, if it is in one.
    pub fn bridged_with(&self, id: CallId) -> Option<CallId> {
        self.calls.get(&id).and_then(|c| c.bridge)
    }

    /// Carries what `id` just reached to its bridge peer: ringing and early
    /// media to an unanswered inbound peer, the answer (answering that
    /// peer), and `bridged` once both legs are answered.
    pub(super) fn bridge_progress(&mut self, now: Instant, ep: &mut Endpoint, id: CallId) {
        let Some((state, Some(peer))) = self.calls.get(&id).map(|c| (c.state, c.bridge)) else {
            return;
        };
        let Some((peer_state, peer_dir)) = self.calls.get(&peer).map(|c| (c.state, c.direction))
        else {
            return;
        };
        let peer_unanswered_inbound = peer_dir == CallDirection::Inbound
            && matches!(
                peer_state,
                CallState::Created | CallState::Ringing | CallState::EarlyMedia
            );
        match state {
            CallState::Ringing if peer_unanswered_inbound && peer_state == CallState::Created => {
                self.ring_inbound(now, ep, peer);
            }
            CallState::EarlyMedia if peer_unanswered_inbound && self.config.early_media => {
                self.early_media_inbound(now, ep, peer);
            }
            CallState::Answered | CallState::Bridged => {
                if peer_unanswered_inbound {
                    let _ = self.answer_now(now, ep, peer);
                }
                let answered = |c: Option<&super::table::Call>| {
                    c.is_some_and(|c| matches!(c.state, CallState::Answered | CallState::Bridged))
                };
                if answered(self.calls.get(&id)) && answered(self.calls.get(&peer)) {
                    self.transition(now, id, CallState::Bridged, None);
                    self.transition(now, peer, CallState::Bridged, None);
                }
            }
            _ => {}
        }
    }

    /// `ended` just left the table: its bridge peer ends too.
    pub(super) fn end_bridge_peer(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        peer: CallId,
        ended: Ended,
    ) {
        let Some(c) = self.calls.get_mut(&peer) else {
            return;
        };
        c.bridge = None;
        let by_peer = Ended::local(EndCause::BridgePeer, None);
        match (c.direction, c.state) {
            (_, CallState::Ending | CallState::Ended) => {}
            (_, CallState::Answered | CallState::Bridged) => self.bye(now, ep, peer, by_peer),
            (CallDirection::Outbound, _) => self.cancel_invite(
                now,
                ep,
                peer,
                Ended {
                    code: Some(487),
                    ..by_peer
                },
            ),
            (CallDirection::Inbound, _) => {
                // The caller hears why its call failed: the status that
                // ended the other leg, when it was a failure.
                let code = ended
                    .code
                    .filter(|c| (300..700).contains(c) && *c != 487)
                    .unwrap_or(480);
                self.respond_final(now, ep, peer, code, "Bridged Call Ended");
                self.finish(
                    now,
                    ep,
                    peer,
                    Ended {
                        code: Some(code),
                        ..by_peer
                    },
                );
            }
        }
    }
}
