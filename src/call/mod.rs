//! Calls: sans-IO machines owned by the SIP core task, next to the
//! endpoint (no task per call). [`Calls`] is the live call table; every
//! call gauge is derived from it, every transition is a [`CallEvent`], and
//! every non-final state has a deadline, so no call can stay "ringing
//! forever".
//!
//! The table drives the endpoint directly (both are sans-IO): it takes the
//! endpoint's events for its calls and calls `send_request`, `respond`,
//! `cancel` and `send_ack` on it.

mod bridge;
mod cause;
mod dtmf;
mod inbound;
mod media;
mod outbound;
mod session;
mod table;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use cause::{Disposition, EndCause, Ended, Side};
pub use dtmf::{MAX_DIGITS, is_digit};
pub use media::{MediaError, MediaOp, PortClaim, PortPool};
pub use table::{AccountLimit, CallError, CallSummary, Calls, Live};

use crate::sdp::{Codec, SrtpPolicy};
use crate::sip::target::Target;

/// A call's id, unique in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CallId(pub u64);

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "call-{}", self.0)
    }
}

/// Which way a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallDirection {
    /// We sent the INVITE.
    Outbound,
    /// We received it.
    Inbound,
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Set up, nothing sent or answered yet.
    Created,
    /// INVITE sent (or received), no ringing yet.
    Dialing,
    /// 180 (sent or received).
    Ringing,
    /// 183 with SDP: media before the answer.
    EarlyMedia,
    /// 2xx.
    Answered,
    /// Joined to another leg.
    Bridged,
    /// BYE or CANCEL sent; waiting for it to complete.
    Ending,
    /// Over (a call leaves the table in this state).
    Ended,
}

impl CallState {
    /// Every state, in order.
    pub const ALL: [CallState; 8] = [
        Self::Created,
        Self::Dialing,
        Self::Ringing,
        Self::EarlyMedia,
        Self::Answered,
        Self::Bridged,
        Self::Ending,
        Self::Ended,
    ];

    /// The state's label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Dialing => "dialing",
            Self::Ringing => "ringing",
            Self::EarlyMedia => "early_media",
            Self::Answered => "answered",
            Self::Bridged => "bridged",
            Self::Ending => "ending",
            Self::Ended => "ended",
        }
    }
}

/// A call's transition, for the control channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallEvent {
    /// The call.
    pub call: CallId,
    /// Its name (the call id of the control channel and of call records).
    pub name: Arc<str>,
    /// From, as the call shows it.
    pub from: Arc<str>,
    /// To, as the call shows it.
    pub to: Arc<str>,
    /// Milliseconds from creation to the answer, once answered.
    pub answered_ms: Option<u64>,
    /// The name of the leg it is bridged with, if any.
    pub other: Option<Arc<str>>,
    /// Its SIP Call-ID.
    pub sip_call_id: String,
    /// Which way it goes.
    pub direction: CallDirection,
    /// The state it entered.
    pub state: CallState,
    /// The SIP status behind the transition, if any.
    pub code: Option<u16>,
    /// How it ended (with [`CallState::Ended`] only).
    pub ended: Option<Ended>,
    /// What it came to (with [`CallState::Ended`] only; set by the SIP
    /// core, which knows the analysis).
    pub disposition: Option<Disposition>,
    /// The account it belongs to, if any.
    pub account: Option<String>,
    /// Milliseconds since the call was created.
    pub elapsed_ms: u64,
}

/// Digest credentials for challenges to our INVITEs.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Digest user name.
    pub username: String,
    /// Password (never printed).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An outbound call to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Originate {
    /// The callee's URI (the Request-URI and To).
    pub to: String,
    /// Our identity: the From URI.
    pub from_uri: String,
    /// From display name.
    pub display: Option<String>,
    /// P-Asserted-Identity value, if any.
    pub asserted_identity: Option<String>,
    /// Extra headers (only `X-` names are accepted).
    pub headers: Vec<(String, String)>,
    /// The next hop: a registrar or proxy (with its flow), or the callee.
    pub next_hop: Target,
    /// A Route to preload (an outbound proxy), if any.
    pub route: Option<String>,
    /// Credentials for 401/407.
    pub credentials: Option<Credentials>,
    /// The account the call belongs to, if any.
    pub account: Option<String>,
    /// Contact user part.
    pub contact_user: String,
    /// How long to ring before cancelling; the call table's default when
    /// `None`.
    pub ring_timeout: Option<Duration>,
    /// Longest call after the answer; the call table's default when `None`.
    pub max_duration: Option<Duration>,
    /// The call's name; one is made up when `None`. Refused while a live
    /// call has it.
    pub name: Option<String>,
    /// Whether its audio is encrypted (SDES-SRTP).
    pub srtp: SrtpPolicy,
    /// The campaign it belongs to, if any.
    pub campaign: Option<Campaign>,
}

/// A campaign tag and its limit of live calls here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    /// The tag.
    pub tag: Arc<str>,
    /// Most live calls of the campaign in this table (0: no limit).
    pub max_calls: usize,
}

/// Something a call reports that is not a change of state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallNote {
    /// The call's name.
    pub name: Arc<str>,
    /// What.
    pub kind: NoteKind,
}

/// What a [`CallNote`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// The peer sent a DTMF digit (SIP INFO).
    Dtmf {
        /// The digit.
        digit: char,
        /// Its duration, milliseconds.
        duration_ms: u32,
    },
    /// The media of an answered call was negotiated.
    Media {
        /// The codec.
        codec: String,
        /// Our RTP port.
        local_port: Option<u16>,
        /// The peer's RTP address.
        remote: Option<String>,
    },
}

/// What to do with an inbound INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundAction {
    /// Refuse it with this status.
    Reject(u16),
    /// Answer at once.
    Answer,
    /// Ring and wait for an answer request, up to the answer timeout.
    Ring,
}

/// The inbound policy for one INVITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// What to do.
    pub action: InboundAction,
    /// The account it came for, if any.
    pub account: Option<String>,
    /// Contact user part.
    pub contact_user: String,
    /// Whether its audio must, may or must not be encrypted.
    pub srtp: SrtpPolicy,
}

/// Fills buffers with key material: a CSPRNG, injected like the
/// [`Entropy`](crate::sip::ids::Entropy) of identifiers (the daemon gives
/// the OS's, tests a seeded one).
pub trait KeySource: Send + std::fmt::Debug {
    /// Fills `out` with random bytes; false when no randomness could be had.
    fn fill(&mut self, out: &mut [u8]) -> bool;
}

/// Timeouts and media preferences of the call table.
#[derive(Debug, Clone, PartialEq)]
pub struct CallConfig {
    /// Outbound: how long to ring before a CANCEL.
    pub ring_timeout: Duration,
    /// The shortest ring timeout an originate may ask for (unanswered calls
    /// must ring long enough; 0: no floor).
    pub min_ring: Duration,
    /// Timer C: a CANCEL when no provisional came for this long.
    pub timer_c: Duration,
    /// Inbound `Ring`: how long to wait for an answer request.
    pub answer_timeout: Duration,
    /// Longest call after the answer.
    pub max_duration: Duration,
    /// How long `Ending` may last (BYE or CANCEL unanswered).
    pub ending: Duration,
    /// The session interval to ask for and to grant (RFC 4028); `None`
    /// turns session timers off.
    pub session_expires: Option<Duration>,
    /// The smallest session interval accepted (Min-SE).
    pub min_se: Duration,
    /// Pass a bridged outbound leg's early media on to its unanswered
    /// inbound peer (a 183 with our SDP).
    pub early_media: bool,
    /// The address SDP advertises for media.
    pub media_address: std::net::IpAddr,
    /// Codecs in preference order (telephone-event included or not).
    pub codecs: Vec<Codec>,
    /// Packetization time to ask for.
    pub ptime_ms: Option<u32>,
    /// User-Agent and Server value.
    pub user_agent: String,
    /// Prefix of the names made up for calls that come without one.
    pub name_prefix: String,
    /// The SHA-256 digest of the media's DTLS certificate; `None`: no
    /// DTLS-SRTP (offers refused, `dtls` calls not placed).
    pub dtls_fingerprint: Option<Vec<u8>>,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            ring_timeout: Duration::from_secs(60),
            min_ring: Duration::ZERO,
            timer_c: Duration::from_secs(180),
            answer_timeout: Duration::from_secs(30),
            max_duration: Duration::from_secs(4 * 3600),
            ending: Duration::from_secs(32),
            session_expires: Some(Duration::from_secs(1800)),
            min_se: Duration::from_secs(90),
            early_media: true,
            media_address: std::net::IpAddr::from([127, 0, 0, 1]),
            codecs: vec![Codec::Pcmu, Codec::Pcma, Codec::TelephoneEvent],
            ptime_ms: Some(20),
            user_agent: concat!("dialerd/", env!("CARGO_PKG_VERSION")).to_owned(),
            name_prefix: "call-".to_owned(),
            dtls_fingerprint: None,
        }
    }
}
