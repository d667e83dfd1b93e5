//! One media leg as the relay sees it: what was negotiated for it, where its
//! peer really sends from (latching), what it received and what we sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::dtls::DtlsSession;
use super::g711::Law;
use super::player::Source;
use super::srtp::Transform;
use super::stats::ReceiveStats;
use super::telephone_event::{Detector, Generator};

/// A leg's id: the call it belongs to (an external endpoint of a call has
/// [`ENDPOINT_BIT`] set).
pub type LegId = u64;

/// Set in the id of a call's external RTP endpoint leg.
pub const ENDPOINT_BIT: LegId = 1 << 62;

/// The audio codec a leg negotiated, as far as the relay cares.
/// Written as SDP names them (`PCMU`, `PCMA`), `other` for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AudioCodec {
    /// G.711 µ-law.
    #[serde(rename = "PCMU")]
    Pcmu,
    /// G.711 A-law.
    #[serde(rename = "PCMA")]
    Pcma,
    /// Anything else: relayed as it is, never transcoded or generated.
    #[serde(rename = "other")]
    Other,
}

impl AudioCodec {
    /// The G.711 law, if the codec is G.711.
    pub fn law(self) -> Option<Law> {
        match self {
            AudioCodec::Pcmu => Some(Law::Mu),
            AudioCodec::Pcma => Some(Law::A),
            AudioCodec::Other => None,
        }
    }
}

/// What was negotiated for a leg: where its peer wants media, in which
/// format, and whether it sends and receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegSpec {
    /// The peer's signalled RTP address.
    pub remote: SocketAddr,
    /// The peer's RTCP address; `None` when RTCP shares the RTP port
    /// (rtcp-mux).
    pub rtcp: Option<SocketAddr>,
    /// The audio codec.
    pub codec: AudioCodec,
    /// Its payload type as the peer numbered it (what we send).
    pub payload_type: u8,
    /// The peer's telephone-event payload type, when both sides have it.
    pub dtmf_payload_type: Option<u8>,
    /// The telephone-event payload type we announced (what the peer may send).
    pub local_dtmf_payload_type: Option<u8>,
    /// Packetization time, milliseconds.
    pub ptime_ms: u32,
    /// The peer sends to us (false on a hold that stops its media).
    pub peer_sends: bool,
    /// The peer receives from us (false when it holds us: sendonly, inactive).
    pub peer_receives: bool,
    /// The peer is a SIP phone or PBX: its silence ends the call
    /// (`media_timeout`); an external endpoint's silence is only reported.
    pub watched: bool,
}

impl LegSpec {
    /// Samples (RTP units at 8 kHz) per packet.
    pub fn frame_samples(&self) -> u32 {
        self.ptime_ms.clamp(10, 60).saturating_mul(8)
    }

    /// The packetization interval.
    pub fn ptime(&self) -> Duration {
        Duration::from_millis(u64::from(self.ptime_ms.clamp(10, 60)))
    }

    /// Whether `pt` is a telephone-event payload type from the peer.
    pub fn is_dtmf(&self, pt: u8) -> bool {
        Some(pt) == self.local_dtmf_payload_type || Some(pt) == self.dtmf_payload_type
    }
}

/// Per-leg totals, as `/status`, `call_status` and the end-of-call
/// `call.media` event report them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LegStats {
    /// The leg.
    pub leg: LegId,
    /// The call's name.
    pub name: Arc<str>,
    /// Our RTP port.
    pub local_port: u16,
    /// The negotiated codec, if negotiated yet.
    pub codec: Option<AudioCodec>,
    /// RTP packets received from the peer.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Packets lost on the way in (RFC 3550 A.3).
    pub rx_lost: u64,
    /// Interarrival jitter, milliseconds (RFC 3550 A.8).
    pub jitter_ms: f64,
    /// RTP packets sent to the peer (relayed and generated).
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Of those, packets we generated: silence fill, prompts, DTMF.
    pub generated_packets: u64,
    /// Packets dropped: not from the latched address, malformed, or
    /// nowhere to go.
    pub dropped_packets: u64,
    /// RTCP packets relayed from this leg.
    pub rtcp_packets: u64,
    /// Packets toward the peer the socket refused (not counted as sent).
    pub send_failed: u64,
    /// Milliseconds since the last packet from the peer; `None` if none came.
    pub last_rx_age_ms: Option<u64>,
    /// Where the peer's RTP really comes from.
    pub latched: Option<SocketAddr>,
    /// The SRTP suite of the leg, if its media is encrypted.
    pub srtp: Option<&'static str>,
    /// SRTP/SRTCP packets from the peer that failed authentication or
    /// replay checks (dropped; also counted in `dropped_packets`).
    pub srtp_rejected: u64,
}

/// Our side of the stream toward the peer: one SSRC, continuous sequence
/// numbers and timestamps whether packets are relayed or generated.
#[derive(Debug, Clone)]
pub(super) struct Outbound {
    /// Our SSRC toward this peer.
    pub ssrc: u32,
    /// Last sequence number sent.
    pub seq: u16,
    /// Last timestamp sent.
    pub ts: u32,
    /// When the last packet was sent.
    pub at: Option<Instant>,
    /// Added to a relayed packet's sequence number.
    pub seq_offset: u16,
    /// Added to a relayed packet's timestamp.
    pub ts_offset: u32,
    /// The SSRC relayed packets come from now.
    pub source: Option<u32>,
    /// Relayed packets must re-align (we generated packets since).
    pub resync: bool,
    /// Set the marker on the next packet (a new talkspurt).
    pub marker: bool,
}

impl Outbound {
    pub fn new(ssrc: u32, seq: u16, ts: u32) -> Outbound {
        Outbound {
            ssrc,
            seq,
            ts,
            at: None,
            seq_offset: 0,
            ts_offset: 0,
            source: None,
            resync: true,
            marker: true,
        }
    }

    /// The header of the next relayed packet, given the incoming one's
    /// source, sequence number and timestamp.
    pub fn relay(&mut self, now: Instant, ssrc: u32, seq: u16, ts: u32, frame: u32) -> (u16, u32) {
        if self.resync || self.source != Some(ssrc) {
            let elapsed = self
                .at
                .map(|at| samples(now.saturating_duration_since(at)))
                .unwrap_or(frame)
                .max(1);
            self.seq_offset = self.seq.wrapping_add(1).wrapping_sub(seq);
            self.ts_offset = self.ts.wrapping_add(elapsed).wrapping_sub(ts);
            self.source = Some(ssrc);
            self.resync = false;
            self.marker = true;
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        // Late or duplicate packets keep their place; the newest is remembered.
        if out_seq.wrapping_sub(self.seq) < 0x8000 {
            self.seq = out_seq;
            self.ts = out_ts;
        }
        self.at = Some(now);
        (out_seq, out_ts)
    }

    /// The header of the next generated packet `advance` samples after the
    /// last one.
    pub fn generate(&mut self, now: Instant, advance: u32) -> (u16, u32) {
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(advance);
        self.at = Some(now);
        self.resync = true;
        (self.seq, self.ts)
    }
}

/// RTP units (8 kHz) in `d`.
pub(super) fn samples(d: Duration) -> u32 {
    u32::try_from(d.as_micros().saturating_mul(8) / 1000).unwrap_or(u32::MAX)
}

/// DTMF digits being sent on a leg as telephone-events.
#[derive(Debug)]
pub(super) struct DtmfOut {
    /// Digits still to send (event codes) with the duration of each.
    pub queue: VecDeque<u8>,
    /// The event being sent and its timestamp.
    pub current: Option<(Generator, u32)>,
    /// Each digit's duration in RTP units.
    pub duration: u16,
}

/// One leg in a shard.
#[derive(Debug)]
pub(super) struct Leg {
    pub id: LegId,
    pub name: Arc<str>,
    pub port: u16,
    /// Bumped when the slot is reused, so stale timers are ignored.
    pub generation: u32,
    pub spec: Option<LegSpec>,
    /// The slot of the leg this one relays to and from.
    pub peer: Option<usize>,
    pub started: Instant,
    /// Silence counts from here: the answer, or the end of a hold.
    pub watch_from: Instant,
    pub latched: Option<SocketAddr>,
    pub rtcp_latched: Option<SocketAddr>,
    pub in_ssrc: Option<u32>,
    pub last_rx: Option<Instant>,
    pub rx: ReceiveStats,
    pub detector: Detector,
    pub out: Outbound,
    pub quiet_reported: bool,
    pub timed_out: bool,
    /// A prompt or tone played to the peer instead of relayed audio.
    pub source: Option<Source>,
    pub dtmf: Option<DtmfOut>,
    /// The next generated packet is due (silence fill, prompt, DTMF).
    pub gen_next: Option<Instant>,
    /// Silence is being generated because nothing was relayed.
    pub filling: bool,
    /// The next deadline a timer is set for.
    pub check_at: Option<Instant>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub generated: u64,
    pub dropped: u64,
    pub rtcp_packets: u64,
    pub send_failed: u64,
    /// SRTP keys: decrypts what the peer sends, encrypts what goes to it.
    pub transform: Option<Transform>,
    /// The DTLS-SRTP association that keys `transform`, on a DTLS leg.
    pub dtls: Option<Box<DtlsSession>>,
    pub srtp_rejected: u64,
    /// Call progress analysis of what the peer sends.
    pub cpa: Option<Box<super::cpa_tap::Tap>>,
}

impl Leg {
    pub fn new(id: LegId, name: Arc<str>, port: u16, now: Instant, out: Outbound) -> Leg {
        Leg {
            id,
            name,
            port,
            generation: 0,
            spec: None,
            peer: None,
            started: now,
            watch_from: now,
            latched: None,
            rtcp_latched: None,
            in_ssrc: None,
            last_rx: None,
            rx: ReceiveStats::default(),
            detector: Detector::default(),
            out,
            quiet_reported: false,
            timed_out: false,
            source: None,
            dtmf: None,
            gen_next: None,
            filling: false,
            check_at: None,
            tx_packets: 0,
            tx_bytes: 0,
            generated: 0,
            dropped: 0,
            rtcp_packets: 0,
            send_failed: 0,
            transform: None,
            dtls: None,
            srtp_rejected: 0,
            cpa: None,
        }
    }

    /// Where RTP to the peer goes: where it sends from once latched, else
    /// its signalled address.
    pub fn rtp_target(&self) -> Option<SocketAddr> {
        self.latched.or(self.spec.map(|s| s.remote))
    }

    /// Where RTCP to the peer goes, and whether on the RTP port (rtcp-mux).
    pub fn rtcp_target(&self) -> Option<(SocketAddr, bool)> {
        let spec = self.spec?;
        match spec.rtcp {
            None => self.rtp_target().map(|a| (a, true)),
            Some(signalled) => Some((self.rtcp_latched.unwrap_or(signalled), false)),
        }
    }

    /// The peer takes our media.
    pub fn receives(&self) -> bool {
        self.spec.is_some_and(|s| s.peer_receives)
    }

    /// Silence and comfort can be generated toward the peer.
    pub fn fillable(&self) -> bool {
        self.receives() && self.spec.is_some_and(|s| s.codec.law().is_some())
    }

    /// Generated audio (a prompt or DTMF) replaces relayed audio.
    pub fn generating(&self) -> bool {
        self.source.is_some() || self.dtmf.is_some()
    }

    /// When the peer last sent, or when it could have started: silence
    /// before the answer or during a hold does not count.
    pub fn rx_reference(&self) -> Instant {
        self.last_rx
            .map_or(self.watch_from, |at| at.max(self.watch_from))
    }

    /// Whether the peer's silence is a fault to report: it should send,
    /// and we are in a call with it (answered, or an endpoint).
    pub fn expects_media(&self) -> bool {
        self.spec.is_some_and(|s| s.peer_sends && s.peer_receives)
    }

    /// The leg's totals at `now`.
    pub fn stats(&self, now: Instant) -> LegStats {
        LegStats {
            leg: self.id,
            name: self.name.clone(),
            local_port: self.port,
            codec: self.spec.map(|s| s.codec),
            rx_packets: self.rx.packets(),
            rx_bytes: self.rx.bytes(),
            rx_lost: self.rx.lost(),
            jitter_ms: self.rx.jitter_ms(8000),
            tx_packets: self.tx_packets,
            tx_bytes: self.tx_bytes,
            generated_packets: self.generated,
            dropped_packets: self.dropped,
            rtcp_packets: self.rtcp_packets,
            send_failed: self.send_failed,
            last_rx_age_ms: self.last_rx.map(|at| {
                u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX)
            }),
            latched: self.latched,
            srtp: self.transform.as_ref().map(|t| t.suite().name()),
            srtp_rejected: self.srtp_rejected,
        }
    }
}
