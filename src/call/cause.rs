//! Why a call ended, who ended it, and the SIP status that said so.

use serde::Serialize;

/// Why a call ended. Every ended call has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// A side hung up after the answer.
    Normal,
    /// 486 or 600.
    Busy,
    /// Nobody answered in time (our ring timeout, the peer's 408).
    NoAnswer,
    /// 403, 603 and other refusals.
    Rejected,
    /// 404, 410, 484, 604.
    NotFound,
    /// 480, 500, 502, 504 and similar.
    Unavailable,
    /// 503, or a local limit.
    Congestion,
    /// 488 or 606, or an offer with nothing in common with ours.
    Incompatible,
    /// 3xx: a redirection that was not followed.
    Redirected,
    /// Digest authentication failed (a second challenge, or no credentials).
    AuthFailed,
    /// The caller cancelled before the answer.
    Cancelled,
    /// No final response to the INVITE (Timer B, Timer C).
    Timeout,
    /// No ACK for our 2xx within 64×T1.
    AckTimeout,
    /// A session refresh did not come (RFC 4028).
    SessionTimer,
    /// The maximum call duration passed.
    MaxDuration,
    /// The transport failed or the connection carrying the call was lost.
    Transport,
    /// The other leg of a bridge ended.
    BridgePeer,
    /// The daemon was shutting down.
    Shutdown,
    /// The daemon stopped without ending the call (a crash); found when it
    /// started again.
    DaemonRestart,
    /// The call could not be placed (refused before its INVITE left).
    NotPlaced,
    /// No RTP came from the peer for the media inactivity timeout.
    MediaTimeout,
    /// Every media port of the range was in use.
    MediaPortsExhausted,
    /// The call's media port could not be bound.
    MediaError,
    /// SRTP was required and the peer offered or answered plain RTP.
    SrtpRequired,
    /// The DTLS-SRTP handshake failed or did not complete in time.
    DtlsFailed,
    /// The voice agent closed its stream (`on_end: "hangup"`).
    AgentHangup,
    /// The voice agent's stream could not be made or was lost
    /// (`on_end: "hangup"`).
    AgentFailed,
    /// Answering-machine detection found a machine and the command said
    /// hang up (or its message was left).
    Machine,
    /// A fax machine answered.
    Fax,
    /// A network announcement answered (special information tone).
    Sit,
    /// The abandon guard dropped the call: its agent was not connected in
    /// time after the greeting (the safe-harbor recording was played).
    Dropped,
    /// Any other final response.
    Failed,
}

impl EndCause {
    /// The cause's label (metrics, events).
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Rejected => "rejected",
            Self::NotFound => "not_found",
            Self::Unavailable => "unavailable",
            Self::Congestion => "congestion",
            Self::Incompatible => "incompatible",
            Self::Redirected => "redirected",
            Self::AuthFailed => "auth_failed",
            Self::Cancelled => "cancelled",
            Self::Timeout => "timeout",
            Self::AckTimeout => "ack_timeout",
            Self::SessionTimer => "session_timer",
            Self::MaxDuration => "max_duration",
            Self::Transport => "transport",
            Self::BridgePeer => "bridge_peer",
            Self::Shutdown => "shutdown",
            Self::DaemonRestart => "daemon_restart",
            Self::NotPlaced => "not_placed",
            Self::MediaTimeout => "media_timeout",
            Self::MediaPortsExhausted => "media_ports_exhausted",
            Self::MediaError => "media_error",
            Self::SrtpRequired => "srtp_required",
            Self::DtlsFailed => "dtls_failed",
            Self::AgentHangup => "agent_hangup",
            Self::AgentFailed => "agent_failed",
            Self::Machine => "machine",
            Self::Fax => "fax",
            Self::Sit => "sit",
            Self::Dropped => "dropped",
            Self::Failed => "failed",
        }
    }

    /// The cause a final response to our INVITE (3xx-6xx) means.
    pub fn from_status(code: u16) -> Self {
        match code {
            300..=399 => Self::Redirected,
            486 | 600 => Self::Busy,
            408 => Self::NoAnswer,
            401 | 407 => Self::AuthFailed,
            404 | 410 | 484 | 604 => Self::NotFound,
            488 | 606 => Self::Incompatible,
            480 | 500 | 502 | 504 => Self::Unavailable,
            503 => Self::Congestion,
            403 | 603 => Self::Rejected,
            487 => Self::Cancelled,
            _ => Self::Failed,
        }
    }
}

impl std::fmt::Display for EndCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What an ended call came to, in the terms dialers use (`call.ended`'s
/// `disposition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Answered, with no analysis (or none decided).
    Answered,
    /// A person answered (answering-machine detection).
    Human,
    /// An answering machine or voicemail answered.
    Machine,
    /// A fax machine answered.
    Fax,
    /// A person answered and was not connected in time (abandoned; the
    /// safe-harbor recording was played).
    Dropped,
    /// Busy.
    Busy,
    /// The callee's side gave up ringing (408, 480).
    NoAnswer,
    /// Our ring timeout passed.
    RingTimeout,
    /// The number does not exist (404, 410, 484, 604, or a SIT).
    InvalidNumber,
    /// The network could not complete it (503, 5xx, no response).
    Congestion,
    /// Refused (403, 603).
    Rejected,
    /// Cancelled before the answer by a command or the caller.
    Cancelled,
    /// Anything else.
    Failed,
}

impl Disposition {
    /// The label in events and records.
    pub fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Human => "human",
            Self::Machine => "machine",
            Self::Fax => "fax",
            Self::Dropped => "dropped",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::RingTimeout => "ring_timeout",
            Self::InvalidNumber => "invalid_number",
            Self::Congestion => "congestion",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    /// The disposition of a call that ended unanswered as `ended` says.
    pub fn unanswered(ended: &Ended) -> Self {
        match ended.cause {
            EndCause::Busy => Self::Busy,
            EndCause::NoAnswer if ended.side == Side::Local => Self::RingTimeout,
            EndCause::NoAnswer => Self::NoAnswer,
            EndCause::Unavailable if ended.code == Some(480) => Self::NoAnswer,
            EndCause::NotFound | EndCause::Sit => Self::InvalidNumber,
            EndCause::Unavailable
            | EndCause::Congestion
            | EndCause::Timeout
            | EndCause::Transport => Self::Congestion,
            EndCause::Rejected => Self::Rejected,
            EndCause::Cancelled => Self::Cancelled,
            _ => Self::Failed,
        }
    }
}

/// Who ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// dialerd (a command, a timeout, a policy).
    Local,
    /// The peer (a BYE, CANCEL or final response).
    Remote,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ended {
    /// Why.
    pub cause: EndCause,
    /// The SIP status involved, if any (the final response, 487 for a
    /// cancel, 408 for a timeout).
    pub code: Option<u16>,
    /// Who.
    pub side: Side,
}

impl Ended {
    /// Ended by the peer.
    pub fn remote(cause: EndCause, code: Option<u16>) -> Self {
        Self {
            cause,
            code,
            side: Side::Remote,
        }
    }

    /// Ended here.
    pub fn local(cause: EndCause, code: Option<u16>) -> Self {
        Self {
            cause,
            code,
            side: Side::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_causes() {
        for (code, cause) in [
            (302, EndCause::Redirected),
            (486, EndCause::Busy),
            (600, EndCause::Busy),
            (404, EndCause::NotFound),
            (480, EndCause::Unavailable),
            (503, EndCause::Congestion),
            (603, EndCause::Rejected),
            (488, EndCause::Incompatible),
            (408, EndCause::NoAnswer),
            (499, EndCause::Failed),
        ] {
            assert_eq!(EndCause::from_status(code), cause, "{code}");
        }
    }

    #[test]
    fn unanswered_calls_get_the_dispositions_dialers_use() {
        for (ended, d) in [
            (Ended::remote(EndCause::Busy, Some(486)), "busy"),
            (Ended::local(EndCause::NoAnswer, Some(487)), "ring_timeout"),
            (Ended::remote(EndCause::NoAnswer, Some(408)), "no_answer"),
            (Ended::remote(EndCause::Unavailable, Some(480)), "no_answer"),
            (
                Ended::remote(EndCause::Unavailable, Some(502)),
                "congestion",
            ),
            (
                Ended::remote(EndCause::NotFound, Some(404)),
                "invalid_number",
            ),
            (Ended::remote(EndCause::Congestion, Some(503)), "congestion"),
            (Ended::remote(EndCause::Rejected, Some(603)), "rejected"),
            (Ended::local(EndCause::Cancelled, Some(487)), "cancelled"),
            (Ended::remote(EndCause::Incompatible, Some(488)), "failed"),
        ] {
            assert_eq!(Disposition::unanswered(&ended).label(), d, "{ended:?}");
        }
    }
}
