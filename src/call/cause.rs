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
}
