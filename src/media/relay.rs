//! The relay: the sans-IO packet path of one media shard.
//!
//! A datagram that arrived on a leg's socket goes in with the time, is
//! checked (symmetric RTP latching), counted, inspected for RFC 4733
//! telephone-events, rewritten in place for the peer leg (payload type,
//! G.711 law, our SSRC, continuous sequence numbers and timestamps) and
//! comes out as a [`Transmit`] from the peer's socket. Deadlines generate
//! what no packet brings: silence toward a peer whose source went quiet,
//! prompts and DTMF, the quiet report and the `media_timeout` of a leg
//! whose peer stopped sending. The caller owns the sockets and the buffer;
//! nothing here allocates per packet.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::dtls::{self, DtlsSession, DtlsSetup, Identity};
use super::g711;
use super::leg::{DtmfOut, Leg, LegId, LegSpec, LegStats, Outbound};
use super::player::Source;
use super::rtp;
use super::srtp::{SrtpError, SrtpKeys, Transform};
use super::telephone_event::{self, Generator};

/// Which socket of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The RTP port.
    Rtp,
    /// The RTCP port (the next one).
    Rtcp,
}

/// A datagram to send: `len` bytes of the caller's buffer from the socket
/// of leg `slot` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The leg whose socket sends.
    pub slot: usize,
    /// Which of its sockets.
    pub channel: Channel,
    /// Where to.
    pub to: SocketAddr,
    /// How many bytes of the buffer.
    pub len: usize,
}

/// How the relay behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// Silence is generated toward a peer after this long with nothing sent.
    pub fill_after: Duration,
    /// A peer that stops sending for this long is reported quiet.
    pub quiet_after: Duration,
    /// A watched leg with nothing received for this long ends its call;
    /// `None` never.
    pub inactivity: Option<Duration>,
    /// A new SSRC from another address may take over the latch after this
    /// long without packets from the latched one.
    pub relatch_pause: Duration,
    /// Latch to any source address, not only the signalled IP.
    pub latch_any: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            fill_after: Duration::from_millis(100),
            quiet_after: Duration::from_secs(2),
            inactivity: Some(Duration::from_secs(30)),
            relatch_pause: Duration::from_millis(500),
            latch_any: false,
        }
    }
}

/// What the relay reports about a leg.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MediaEventKind {
    /// The peer's RTP comes from this address.
    Latched {
        /// The address.
        address: SocketAddr,
    },
    /// A telephone-event digit, reported once.
    Dtmf {
        /// The digit.
        digit: char,
        /// Its duration, milliseconds.
        duration_ms: u32,
    },
    /// The peer stopped sending; silence is sent in its place.
    Quiet {
        /// Milliseconds since its last packet.
        silent_ms: u64,
    },
    /// The peer sends again.
    Recovered,
    /// A watched peer sent nothing for the inactivity timeout.
    Timeout,
    /// A prompt or tone finished.
    PlayDone,
    /// All queued DTMF digits were sent.
    DtmfSent,
    /// The leg's SRTP keys could not be used.
    SrtpFailed {
        /// Why.
        reason: String,
    },
    /// The leg's DTLS-SRTP handshake failed or timed out.
    DtlsFailed {
        /// Why.
        reason: String,
    },
    /// The leg's DTLS-SRTP handshake completed; media is encrypted now.
    DtlsConnected,
    /// The agent stream of the leg is up: `start` was sent.
    AgentStarted {
        /// The stream's id (`MZ…`).
        stream_sid: String,
        /// The call's id in the stream (`CA…`).
        call_sid: String,
    },
    /// A message from the agent was ignored.
    AgentBadMessage {
        /// Why.
        reason: String,
    },
    /// Agent audio was dropped: more was sent than the queue holds.
    AgentOverflow {
        /// Milliseconds dropped.
        dropped_ms: u64,
    },
    /// The agent stream ended (not by our own stop).
    AgentEnded {
        /// What ended it (`connect_failed`, `refused`, `closed`, `lost`, ...).
        reason: &'static str,
        /// The detail.
        detail: String,
        /// Whether the call hangs up for it (`on_end: "hangup"`).
        hang_up: bool,
    },
    /// The leg's RTP or RTCP port could not be bound.
    BindFailed {
        /// The port.
        port: u16,
    },
    /// Call progress analysis of the leg's inbound audio reported.
    #[serde(skip)]
    Progress {
        /// What.
        report: crate::cpa::analyzer::Report,
        /// Whether the analysis was of early media.
        early: bool,
    },
    /// The audio an analysis captured for tuning (8 kHz linear).
    #[serde(skip)]
    ProgressCapture {
        /// The samples.
        samples: Arc<[i16]>,
    },
    /// The leg closed; its totals.
    Closed {
        /// The totals.
        stats: LegStats,
    },
}

/// A report about one leg.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MediaEvent {
    /// The leg.
    pub leg: LegId,
    /// The call's name.
    pub name: Arc<str>,
    /// What happened.
    pub kind: MediaEventKind,
}

/// Why a leg command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// No such leg in this shard.
    #[error("no media leg {0}")]
    UnknownLeg(LegId),
    /// The leg's SRTP keys could not be used.
    #[error("media leg {0}: {1}")]
    Srtp(LegId, SrtpError),
    /// The leg's DTLS association could not be set up.
    #[error("media leg {0}: {1}")]
    Dtls(LegId, dtls::DtlsError),
    /// The leg has no negotiated G.711 media to play into.
    #[error("media leg {0} cannot take generated audio (no G.711 negotiated)")]
    NotGenerating(LegId),
    /// The leg's peer did not negotiate telephone-event.
    #[error("media leg {0} has no telephone-event negotiated")]
    NoTelephoneEvent(LegId),
}

/// Largest RTP payload we generate (60 ms of G.711).
const MAX_FRAME: usize = 480;
/// Pause between two generated DTMF digits.
const INTER_DIGIT: Duration = Duration::from_millis(60);

/// The legs of one shard and their deadlines.
pub struct Relay {
    config: RelayConfig,
    legs: Vec<Option<Leg>>,
    free: Vec<usize>,
    by_id: HashMap<LegId, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    events: VecDeque<MediaEvent>,
    rng: u64,
    generations: u32,
    crypto: Option<Arc<dyn rtc_srtp::crypto::RTCCryptoProvider>>,
    identity: Option<Identity>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("legs", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// An empty relay; `seed` feeds the SSRCs and initial sequence numbers.
    pub fn new(config: RelayConfig, seed: u64) -> Relay {
        Relay {
            config,
            legs: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            rng: seed | 1,
            generations: 0,
            crypto: None,
            identity: None,
        }
    }

    /// The certificate DTLS-SRTP legs present.
    pub fn set_identity(&mut self, identity: Option<Identity>) {
        self.identity = identity;
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: reproducible from the seed, fine for SSRCs.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Legs in the relay.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No legs.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The slot of `leg`.
    pub fn slot(&self, leg: LegId) -> Option<usize> {
        self.by_id.get(&leg).copied()
    }

    /// Adds a leg receiving on `port`; returns its slot (the caller binds
    /// the sockets under it).
    pub fn insert(&mut self, now: Instant, id: LegId, name: Arc<str>, port: u16) -> usize {
        if let Some(old) = self.slot(id) {
            self.remove(now, id);
            tracing::warn!(
                leg = id,
                slot = old,
                "media leg opened twice; the old one closed"
            );
        }
        let r = self.random();
        let out = Outbound::new(r as u32, (r >> 32) as u16, (r >> 40) as u32);
        self.place(now, Leg::new(id, name, port, now, out))
    }

    /// Puts `leg` in a free slot with a new generation and schedules it.
    fn place(&mut self, now: Instant, mut leg: Leg) -> usize {
        self.generations = self.generations.wrapping_add(1);
        leg.generation = self.generations;
        let id = leg.id;
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(entry) = self.legs.get_mut(slot) {
                    *entry = Some(leg);
                }
                slot
            }
            None => {
                self.legs.push(Some(leg));
                self.legs.len() - 1
            }
        };
        self.by_id.insert(id, slot);
        self.schedule(slot, now);
        slot
    }

    /// Removes `leg`: unlinks its peer, reports its totals; returns its
    /// slot so the caller closes the sockets.
    pub fn remove(&mut self, now: Instant, id: LegId) -> Option<usize> {
        let slot = self.by_id.remove(&id)?;
        let mut leg = self.legs.get_mut(slot)?.take()?;
        if let Some(peer) = leg.peer
            && let Some(p) = self.leg_mut(peer)
        {
            p.peer = None;
        }
        self.free.push(slot);
        if let Some(samples) = leg.cpa.as_mut().and_then(|t| t.take_capture()) {
            self.events.push_back(MediaEvent {
                leg: id,
                name: leg.name.clone(),
                kind: MediaEventKind::ProgressCapture {
                    samples: samples.into(),
                },
            });
        }
        if let Some((digit, units)) = leg.detector.flush() {
            self.events.push_back(MediaEvent {
                leg: id,
                name: leg.name.clone(),
                kind: MediaEventKind::Dtmf {
                    digit,
                    duration_ms: u32::from(units) / 8,
                },
            });
        }
        self.events.push_back(MediaEvent {
            leg: id,
            name: leg.name.clone(),
            kind: MediaEventKind::Closed {
                stats: leg.stats(now),
            },
        });
        Some(slot)
    }

    /// Takes `leg` out without reporting it (it moves to another shard).
    pub fn detach(&mut self, id: LegId) -> Option<(usize, DetachedLeg)> {
        let slot = self.by_id.remove(&id)?;
        let mut leg = self.legs.get_mut(slot)?.take()?;
        if let Some(peer) = leg.peer.take()
            && let Some(p) = self.leg_mut(peer)
        {
            p.peer = None;
        }
        leg.check_at = None;
        self.free.push(slot);
        Some((slot, DetachedLeg(Box::new(leg))))
    }

    /// Takes in a leg another shard detached; returns its slot here.
    pub fn attach(&mut self, now: Instant, leg: DetachedLeg) -> usize {
        let leg = *leg.0;
        if let Some(old) = self.slot(leg.id) {
            self.remove(now, leg.id);
            tracing::warn!(leg = leg.id, slot = old, "media leg attached twice");
        }
        self.place(now, leg)
    }

    /// Sets or changes what was negotiated for `leg` (answer, re-INVITE).
    pub fn set_spec(&mut self, now: Instant, id: LegId, spec: LegSpec) -> Result<(), RelayError> {
        let slot = self.slot(id).ok_or(RelayError::UnknownLeg(id))?;
        let leg = self.leg_mut(slot).ok_or(RelayError::UnknownLeg(id))?;
        let moved = leg.spec.map(|s| s.remote) != Some(spec.remote);
        if moved {
            leg.latched = None;
            leg.rtcp_latched = None;
        }
        let watching = |s: &LegSpec| s.peer_sends && s.peer_receives;
        if !leg.spec.as_ref().is_some_and(watching)
            || leg.spec.map(|s| s.watched) != Some(spec.watched)
        {
            // Answered, unheld or newly watched: silence counts from now.
            leg.watch_from = now;
            leg.quiet_reported = false;
        }
        if !spec.peer_sends {
            leg.quiet_reported = false;
        }
        leg.spec = Some(spec);
        self.schedule(slot, now);
        Ok(())
    }

    /// Sets `leg`'s SRTP keys (`None`: plain RTP). A re-INVITE's keys keep
    /// the state of a direction whose key did not change.
    pub fn set_keys(&mut self, id: LegId, keys: Option<&SrtpKeys>) -> Result<(), RelayError> {
        let slot = self.slot(id).ok_or(RelayError::UnknownLeg(id))?;
        let Some(keys) = keys else {
            if let Some(leg) = self.leg_mut(slot) {
                leg.transform = None;
            }
            return Ok(());
        };
        let crypto = self.crypto().map_err(|e| RelayError::Srtp(id, e))?;
        let leg = self.leg_mut(slot).ok_or(RelayError::UnknownLeg(id))?;
        let result = match leg.transform.as_mut() {
            Some(t) => t.rekey(keys, crypto.as_ref()),
            None => Transform::new(keys, crypto.as_ref()).map(|t| {
                leg.transform = Some(t);
            }),
        };
        result.map_err(|e| {
            leg.transform = None;
            RelayError::Srtp(id, e)
        })
    }

    /// The SRTP crypto provider, made on first use.
    fn crypto(&mut self) -> Result<Arc<dyn rtc_srtp::crypto::RTCCryptoProvider>, SrtpError> {
        if let Some(c) = &self.crypto {
            return Ok(c.clone());
        }
        let c = super::srtp::provider()?;
        self.crypto = Some(c.clone());
        Ok(c)
    }

    /// Makes `leg` a DTLS-SRTP leg as `setup` says (after its spec is set:
    /// the peer's signalled address is where the handshake goes). A
    /// renegotiation with the same role and fingerprint keeps the
    /// association and its keys; another starts afresh.
    pub fn set_dtls(
        &mut self,
        now: Instant,
        id: LegId,
        setup: DtlsSetup,
    ) -> Result<(), RelayError> {
        let slot = self.slot(id).ok_or(RelayError::UnknownLeg(id))?;
        let identity = self.identity.clone().ok_or(RelayError::Dtls(
            id,
            dtls::DtlsError::Setup("no certificate".into()),
        ))?;
        let leg = self.leg_mut(slot).ok_or(RelayError::UnknownLeg(id))?;
        if leg.dtls.as_ref().is_some_and(|d| *d.setup() == setup) {
            return Ok(());
        }
        let peer = leg
            .spec
            .map(|s| s.remote)
            .ok_or(RelayError::UnknownLeg(id))?;
        let session =
            DtlsSession::new(now, &identity, setup, peer).map_err(|e| RelayError::Dtls(id, e))?;
        leg.transform = None;
        leg.dtls = Some(Box::new(session));
        self.schedule(slot, now);
        Ok(())
    }

    /// A DTLS datagram for the leg in `slot`: on to its association; the
    /// keys it exports once the handshake completes key the leg.
    fn handle_dtls(&mut self, now: Instant, slot: usize, buf: &[u8]) {
        let crypto = self.crypto();
        let Some(leg) = self.leg_mut(slot) else {
            return;
        };
        let Some(session) = leg.dtls.as_mut() else {
            leg.dropped += 1;
            return;
        };
        let outcome = match session.handle(now, buf) {
            Ok(Some(keys)) => match crypto {
                Ok(c) => Transform::new(&keys, c.as_ref())
                    .map(Some)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(Some(transform)) => {
                leg.transform = Some(transform);
                self.report(slot, MediaEventKind::DtlsConnected);
            }
            Ok(None) => {}
            Err(reason) => {
                leg.dtls = None;
                leg.transform = None;
                self.report(slot, MediaEventKind::DtlsFailed { reason });
            }
        }
        self.schedule(slot, now);
    }

    /// Relays between `a` and `b` (each leaves a previous peer).
    pub fn connect(&mut self, now: Instant, a: LegId, b: LegId) -> Result<(), RelayError> {
        let sa = self.slot(a).ok_or(RelayError::UnknownLeg(a))?;
        let sb = self.slot(b).ok_or(RelayError::UnknownLeg(b))?;
        self.unlink(sa);
        self.unlink(sb);
        if let Some(l) = self.leg_mut(sa) {
            l.peer = Some(sb);
        }
        if let Some(l) = self.leg_mut(sb) {
            l.peer = Some(sa);
        }
        self.schedule(sa, now);
        self.schedule(sb, now);
        Ok(())
    }

    /// Stops relaying for `leg`.
    pub fn disconnect(&mut self, id: LegId) -> Result<(), RelayError> {
        let slot = self.slot(id).ok_or(RelayError::UnknownLeg(id))?;
        self.unlink(slot);
        Ok(())
    }

    fn unlink(&mut self, slot: usize) {
        let peer = self.leg_mut(slot).and_then(|l| l.peer.take());
        if let Some(p) = peer.and_then(|p| self.leg_mut(p)) {
            p.peer = None;
        }
    }

    /// Plays `source` to `leg`'s peer in place of relayed audio; `None`
    /// stops a prompt.
    pub fn play(
        &mut self,
        now: Instant,
        id: LegId,
        source: Option<Source>,
    ) -> Result<(), RelayError> {
        let slot = self.slot(id).ok_or(RelayError::UnknownLeg(id))?;
        let leg = self.leg_mut(slot).ok_or(RelayError::UnknownLeg(id))?;
        match source {
            Some(source) => {
                if !leg.fillable() {
                    return Err(RelayError::NotGenerating(id));
                }
                leg.source = Some(source);
                leg.gen_next.get_or_insert(now);
            }
            None => leg.source = None,
        }
        self.schedule(slot, now);
        Ok(())
    }

    /// Sends `digits` to `leg`'s peer as telephone-events, each lasting
    /// `duration`.
    pub fn send_dtmf(
        &mut self,
        now: Instant,
        id: LegId,
        digits: &str,
        duration: Duration,
    ) -> Result<(), RelayError> {
        let slot = self.slot(id).ok_or(RelayError::UnknownLeg(id))?;
        let leg = self.leg_mut(slot).ok_or(RelayError::UnknownLeg(id))?;
        if leg.spec.and_then(|s| s.dtmf_payload_type).is_none() {
            return Err(RelayError::NoTelephoneEvent(id));
        }
        let units = u16::try_from(super::leg::samples(duration)).unwrap_or(u16::MAX);
        let dtmf = leg.dtmf.get_or_insert_with(|| DtmfOut {
            queue: VecDeque::new(),
            current: None,
            duration: units,
        });
        dtmf.duration = units.max(80);
        dtmf.queue
            .extend(digits.chars().filter_map(telephone_event::code).take(64));
        leg.gen_next.get_or_insert(now);
        self.schedule(slot, now);
        Ok(())
    }

    /// Starts call progress analysis of what `id`'s peer sends (early
    /// media's when `answered` is false; an analysis running is replaced),
    /// capturing its first `capture_ms` of audio; `None` stops it.
    pub fn analyse(
        &mut self,
        now: Instant,
        id: LegId,
        analysis: Option<(crate::cpa::analyzer::AnalysisConfig, bool, u32)>,
    ) -> Result<(), RelayError> {
        let slot = self.slot(id).ok_or(RelayError::UnknownLeg(id))?;
        let leg = self.leg_mut(slot).ok_or(RelayError::UnknownLeg(id))?;
        let old = leg.cpa.take();
        let g711 = leg.spec.is_some_and(|s| s.codec.law().is_some());
        match analysis {
            // Only G.711 is decoded: another codec's call gets `unknown`
            // at once rather than a verdict on silence.
            Some((_, answered, _)) if !g711 => {
                if answered {
                    let report = crate::cpa::analyzer::Report::Verdict {
                        outcome: crate::cpa::analyzer::Outcome::Unknown,
                        cause: "unsupported_codec",
                        at_ms: 0,
                        words: 0,
                        voice_ms: 0,
                        greeting_end_ms: None,
                    };
                    self.report(
                        slot,
                        MediaEventKind::Progress {
                            report,
                            early: false,
                        },
                    );
                }
            }
            analysis => {
                leg.cpa = analysis.map(|(config, answered, capture_ms)| {
                    Box::new(super::cpa_tap::Tap::new(now, config, answered, capture_ms))
                });
            }
        }
        if let Some(samples) = old.and_then(|mut t| t.take_capture()) {
            self.report(
                slot,
                MediaEventKind::ProgressCapture {
                    samples: samples.into(),
                },
            );
        }
        self.schedule(slot, now);
        Ok(())
    }

    /// Reports what the leg's analysis found; a finished one is removed
    /// (with its capture).
    fn drain_tap(&mut self, slot: usize) {
        let Some(tap) = self.leg_mut(slot).and_then(|l| l.cpa.as_mut()) else {
            return;
        };
        let mut reports = Vec::new();
        while let Some(r) = tap.poll_report() {
            reports.push(r);
        }
        let mut capture = None;
        let mut early = true;
        if let Some(leg) = self.leg_mut(slot) {
            early = leg.cpa.as_ref().is_some_and(|t| t.is_early());
            if leg.cpa.as_ref().is_some_and(|t| t.is_finished()) {
                capture = leg.cpa.take().and_then(|mut t| t.take_capture());
            }
        }
        for report in reports {
            self.report(slot, MediaEventKind::Progress { report, early });
        }
        if let Some(samples) = capture {
            self.report(
                slot,
                MediaEventKind::ProgressCapture {
                    samples: samples.into(),
                },
            );
        }
    }

    /// The totals of `leg`.
    pub fn stats(&self, now: Instant, id: LegId) -> Option<LegStats> {
        self.slot(id)
            .and_then(|s| self.leg(s))
            .map(|l| l.stats(now))
    }

    /// The totals of every leg.
    pub fn all_stats(&self, now: Instant) -> Vec<LegStats> {
        self.legs.iter().flatten().map(|l| l.stats(now)).collect()
    }

    /// The next report.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// The caller could not send `len` bytes from the leg in `slot`: they
    /// do not count as sent.
    pub fn send_failed(&mut self, slot: usize, len: usize) {
        if let Some(l) = self.leg_mut(slot) {
            l.tx_packets = l.tx_packets.saturating_sub(1);
            l.tx_bytes = l.tx_bytes.saturating_sub(len as u64);
            l.send_failed += 1;
        }
    }

    /// Reports `kind` for the leg in `slot` (the caller's bind failure).
    pub fn report(&mut self, slot: usize, kind: MediaEventKind) {
        if let Some(l) = self.leg(slot) {
            self.events.push_back(MediaEvent {
                leg: l.id,
                name: l.name.clone(),
                kind,
            });
        }
    }

    fn leg(&self, slot: usize) -> Option<&Leg> {
        self.legs.get(slot).and_then(Option::as_ref)
    }

    fn leg_mut(&mut self, slot: usize) -> Option<&mut Leg> {
        self.legs.get_mut(slot).and_then(Option::as_mut)
    }

    /// A datagram of `len` bytes in `buf` arrived on `slot`'s `channel`
    /// from `from`. Returns where the rewritten bytes go, if anywhere.
    ///
    /// On a leg with SRTP keys the datagram is authenticated and decrypted
    /// first (a failure drops it, counted); what goes to a peer with keys is
    /// encrypted last.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        slot: usize,
        channel: Channel,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<Transmit> {
        if dtls::is_dtls(buf.get(..len)?) {
            let packet = buf.get(..len)?.to_vec();
            self.handle_dtls(now, slot, &packet);
            return None;
        }
        let len = self.unprotect(slot, channel, buf, len)?;
        let transmit = self.relay_datagram(now, slot, channel, from, buf, len)?;
        self.protect(transmit, buf)
    }

    /// Decrypts what arrived on a leg with keys; `None` drops it.
    fn unprotect(
        &mut self,
        slot: usize,
        channel: Channel,
        buf: &mut [u8],
        len: usize,
    ) -> Option<usize> {
        self.transform(slot, channel, buf, len, false)
    }

    /// Encrypts what goes to a leg with keys; `None` drops it.
    fn protect(&mut self, t: Transmit, buf: &mut [u8]) -> Option<Transmit> {
        let len = self.transform(t.slot, t.channel, buf, t.len, true)?;
        Some(Transmit { len, ..t })
    }

    /// SRTP or SRTCP (told apart by channel and packet type) on `buf[..len]`
    /// for the leg in `slot`, outbound (protect) or inbound (unprotect); the
    /// length unchanged for a leg without keys.
    fn transform(
        &mut self,
        slot: usize,
        channel: Channel,
        buf: &mut [u8],
        len: usize,
        outbound: bool,
    ) -> Option<usize> {
        let leg = self.leg_mut(slot)?;
        if dtls::is_dtls(buf.get(..len)?) {
            // The handshake's own records go out as they are.
            return Some(len);
        }
        let Some(transform) = leg.transform.as_mut() else {
            if leg.dtls.is_some() {
                // A DTLS leg before its handshake completed: nothing can be
                // protected or trusted yet.
                leg.dropped += u64::from(!outbound);
                return None;
            }
            return Some(len);
        };
        let rtcp = channel == Channel::Rtcp || rtp::is_rtcp(buf.get(..len)?);
        let result = match (outbound, rtcp) {
            (false, false) => transform.unprotect_rtp(buf, len),
            (false, true) => transform.unprotect_rtcp(buf, len),
            (true, false) => transform.protect_rtp(buf, len),
            (true, true) => transform.protect_rtcp(buf, len),
        };
        match result {
            Ok(len) => Some(len),
            Err(e) if outbound => {
                leg.send_failed += 1;
                tracing::debug!(leg = leg.id, error = %e, "SRTP packet not protected");
                None
            }
            Err(e) => {
                leg.srtp_rejected += 1;
                leg.dropped += 1;
                tracing::trace!(leg = leg.id, error = %e, "SRTP packet dropped");
                None
            }
        }
    }

    fn relay_datagram(
        &mut self,
        now: Instant,
        slot: usize,
        channel: Channel,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<Transmit> {
        let packet = buf.get_mut(..len)?;
        if channel == Channel::Rtcp || rtp::is_rtcp(packet) {
            return self.rtcp(slot, channel, from, len);
        }
        let Ok(h) = rtp::parse(packet) else {
            self.drop_on(slot);
            return None;
        };
        let config = self.config;
        let leg = self.leg_mut(slot)?;
        let Some(spec) = leg.spec else {
            leg.dropped += 1;
            return None;
        };
        // Symmetric RTP: the peer's first packets from its signalled IP (or
        // anywhere, if configured) fix where it sends from; another source
        // takes over only with a new SSRC after a pause.
        let latched_now = match leg.latched {
            Some(addr) if addr == from => false,
            // Source port 0 cannot be answered: such packets (crafted or
            // replayed ones) are taken from the signalled IP without
            // latching, and our packets keep going to the signalled port.
            _ if from.port() == 0 => {
                if !config.latch_any && from.ip() != spec.remote.ip() {
                    leg.dropped += 1;
                    return None;
                }
                false
            }
            latched => {
                let allowed = config.latch_any || from.ip() == spec.remote.ip();
                let paused = leg
                    .last_rx
                    .is_none_or(|at| now.saturating_duration_since(at) >= config.relatch_pause);
                if !allowed || (latched.is_some() && (leg.in_ssrc == Some(h.ssrc) || !paused)) {
                    leg.dropped += 1;
                    return None;
                }
                leg.latched = Some(from);
                true
            }
        };
        if leg.in_ssrc != Some(h.ssrc) {
            if leg.in_ssrc.is_some() {
                leg.rx.restart();
            }
            leg.in_ssrc = Some(h.ssrc);
        }
        let arrival = super::leg::samples(now.saturating_duration_since(leg.started));
        leg.rx.on_packet(h.sequence, h.timestamp, arrival, len);
        leg.last_rx = Some(now);
        let recovered = std::mem::take(&mut leg.quiet_reported);
        let dtmf = spec.is_dtmf(h.payload_type);
        let digit = if dtmf {
            let payload = packet.get(h.payload_start..h.payload_end).unwrap_or(&[]);
            telephone_event::parse(payload).and_then(|ev| leg.detector.on_packet(h.timestamp, ev))
        } else {
            // Audio again: an event whose end packets were all lost is over.
            leg.detector.flush()
        };
        if !dtmf
            && h.payload_type == spec.payload_type
            && let (Some(tap), Some(law)) = (leg.cpa.as_mut(), spec.codec.law())
        {
            let payload = packet.get(h.payload_start..h.payload_end).unwrap_or(&[]);
            tap.on_audio(now, h.ssrc, h.timestamp, payload, law);
        }
        let peer = leg.peer;
        // Only an analysed leg pays for the reports' look-up.
        if leg.cpa.is_some() {
            self.drain_tap(slot);
        }
        if latched_now {
            self.report(slot, MediaEventKind::Latched { address: from });
        }
        if recovered {
            self.report(slot, MediaEventKind::Recovered);
        }
        if let Some((digit, units)) = digit {
            self.report(
                slot,
                MediaEventKind::Dtmf {
                    digit,
                    duration_ms: u32::from(units) / 8,
                },
            );
        }
        let peer_slot = peer?;
        let target = self.leg_mut(peer_slot)?;
        let Some(tspec) = target.spec else {
            target.dropped += 1;
            return None;
        };
        if !tspec.peer_receives || target.generating() {
            return None;
        }
        let to = target.rtp_target()?;
        if dtmf {
            let pt = tspec.dtmf_payload_type?;
            rtp::set_payload_type(packet, pt);
        } else {
            if let (Some(from_law), Some(to_law)) = (spec.codec.law(), tspec.codec.law())
                && from_law != to_law
                && let Some(payload) = packet.get_mut(h.payload_start..h.payload_end)
            {
                g711::transcode(payload, from_law, to_law);
            }
            if h.payload_type == spec.payload_type || spec.codec.law().is_some() {
                rtp::set_payload_type(packet, tspec.payload_type);
            }
        }
        let (seq, ts) =
            target
                .out
                .relay(now, h.ssrc, h.sequence, h.timestamp, tspec.frame_samples());
        let marker = h.marker || std::mem::take(&mut target.out.marker);
        rtp::set_marker(packet, marker);
        rtp::set_sequence(packet, seq);
        rtp::set_timestamp(packet, ts);
        rtp::set_ssrc(packet, target.out.ssrc);
        target.filling = false;
        target.tx_packets += 1;
        target.tx_bytes += len as u64;
        Some(Transmit {
            slot: peer_slot,
            channel: Channel::Rtp,
            to,
            len,
        })
    }

    fn drop_on(&mut self, slot: usize) {
        if let Some(l) = self.leg_mut(slot) {
            l.dropped += 1;
        }
    }

    /// RTCP is relayed as it is, from the peer's RTCP port (or RTP port
    /// under rtcp-mux), once its source is the latched peer's IP.
    fn rtcp(
        &mut self,
        slot: usize,
        channel: Channel,
        from: SocketAddr,
        len: usize,
    ) -> Option<Transmit> {
        let latch_any = self.config.latch_any;
        let leg = self.leg_mut(slot)?;
        let spec = leg.spec?;
        let expected_ip = leg.latched.map(|a| a.ip()).unwrap_or(spec.remote.ip());
        if !latch_any && from.ip() != expected_ip {
            leg.dropped += 1;
            return None;
        }
        if channel == Channel::Rtcp {
            leg.rtcp_latched = Some(from);
        }
        leg.rtcp_packets += 1;
        let peer = leg.peer?;
        let target = self.leg(peer)?;
        if !target.receives() {
            return None;
        }
        let (to, mux) = target.rtcp_target()?;
        Some(Transmit {
            slot: peer,
            channel: if mux { Channel::Rtp } else { Channel::Rtcp },
            to,
            len,
        })
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Runs what is due at `now`: reports, timeouts, and at most one
    /// generated packet written into `buf` (call again until `None`);
    /// encrypted for a leg with SRTP keys.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let t = self.next_generated(now, buf)?;
            if let Some(t) = self.protect(t, buf) {
                return Some(t);
            }
        }
    }

    fn next_generated(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                return None;
            }
            self.timers.pop();
            let current = self
                .leg(slot)
                .is_some_and(|l| l.generation == generation && l.check_at == Some(at));
            if !current {
                continue;
            }
            if let Some(l) = self.leg_mut(slot) {
                l.check_at = None;
            }
            let transmit = self.check(now, slot, buf);
            self.schedule(slot, now);
            if transmit.is_some() {
                return transmit;
            }
        }
        None
    }

    /// What is due for the leg in `slot`.
    fn check(&mut self, now: Instant, slot: usize, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self.dtls_due(now, slot, buf) {
            return Some(t);
        }
        let config = self.config;
        let leg = self.leg_mut(slot)?;
        let spec = leg.spec?;
        let silent = now.saturating_duration_since(leg.rx_reference());
        let mut report = None;
        if spec.peer_sends
            && spec.watched
            && !leg.timed_out
            && let Some(limit) = config.inactivity
            && silent >= limit
        {
            leg.timed_out = true;
            report = Some(MediaEventKind::Timeout);
        }
        if report.is_none()
            && leg.expects_media()
            && !leg.quiet_reported
            && silent >= config.quiet_after
        {
            leg.quiet_reported = true;
            report = Some(MediaEventKind::Quiet {
                silent_ms: u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
            });
        }
        // Start filling when nothing was sent toward the peer for a while.
        if leg.gen_next.is_none() && leg.fillable() {
            let idle_since = leg.out.at.unwrap_or(leg.started);
            if now.saturating_duration_since(idle_since) >= config.fill_after {
                leg.filling = true;
                leg.out.marker = true;
                leg.gen_next = Some(now);
            }
        }
        let due = leg.gen_next.is_some_and(|at| at <= now);
        let tapped = leg.cpa.as_mut().map(|tap| tap.on_tick(now)).is_some();
        if tapped {
            self.drain_tap(slot);
        }
        if let Some(kind) = report {
            self.report(slot, kind);
        }
        if due {
            self.generate(now, slot, buf)
        } else {
            None
        }
    }

    /// The DTLS association's retransmissions and deadline, and its next
    /// datagram, written into `buf`.
    fn dtls_due(&mut self, now: Instant, slot: usize, buf: &mut [u8]) -> Option<Transmit> {
        let leg = self.leg_mut(slot)?;
        let session = leg.dtls.as_mut()?;
        if session.poll_timeout().is_some_and(|at| at <= now)
            && let Err(e) = session.handle_timeout(now)
        {
            leg.dtls = None;
            leg.transform = None;
            self.report(
                slot,
                MediaEventKind::DtlsFailed {
                    reason: e.to_string(),
                },
            );
            return None;
        }
        let to = leg.rtp_target()?;
        let packet = leg.dtls.as_mut()?.poll_transmit()?;
        let len = packet.len();
        buf.get_mut(..len)?.copy_from_slice(&packet);
        Some(Transmit {
            slot,
            channel: Channel::Rtp,
            to,
            len,
        })
    }

    /// Writes the next generated packet of `slot` (DTMF, prompt, silence).
    fn generate(&mut self, now: Instant, slot: usize, buf: &mut [u8]) -> Option<Transmit> {
        let leg = self.leg_mut(slot)?;
        let spec = leg.spec?;
        let to = leg.rtp_target()?;
        let ptime = spec.ptime();
        let frame = spec.frame_samples();
        let next = leg.gen_next.unwrap_or(now);
        // Keep the cadence; after a stall, restart it rather than burst.
        let mut following = next + ptime;
        if following + ptime * 5 < now {
            following = now + ptime;
        }
        if !leg.generating() && !leg.filling {
            leg.gen_next = None;
            return None;
        }
        let mut done = None;
        let written = if leg.dtmf.is_some() {
            let pt = spec.dtmf_payload_type.unwrap_or(101);
            match next_dtmf_packet(leg, now, frame, pt, buf) {
                DtmfStep::Packet(len) => Some(len),
                DtmfStep::Gap => {
                    following = now + INTER_DIGIT;
                    None
                }
                DtmfStep::Finished => {
                    leg.dtmf = None;
                    done = Some(MediaEventKind::DtmfSent);
                    None
                }
            }
        } else if let Some(law) = spec.codec.law() {
            let samples = usize::try_from(frame).unwrap_or(160).min(MAX_FRAME);
            let (head, body) = buf.split_at_mut(rtp::HEADER_LEN.min(buf.len()));
            let payload = body.get_mut(..samples)?;
            match leg.source.as_mut() {
                Some(source) => {
                    if !source.fill(payload, law) {
                        leg.source = None;
                        done = Some(MediaEventKind::PlayDone);
                    }
                }
                None => payload.fill(law.silence()),
            }
            let (seq, ts) = leg.out.generate(now, frame);
            let marker = std::mem::take(&mut leg.out.marker);
            let _ = rtp::write_header(head, marker, spec.payload_type, seq, ts, leg.out.ssrc);
            Some(rtp::HEADER_LEN + samples)
        } else {
            None
        };
        // Generation goes on while something is queued, a prompt plays, or
        // nothing is relayed toward the peer.
        let more = leg.generating() || leg.filling;
        leg.gen_next = more.then_some(following);
        if !more {
            leg.filling = false;
            // The next relayed packet starts a talkspurt.
            leg.out.marker = true;
        }
        // Toward a peer that holds us nothing goes out (generation still
        // advances, so a prompt or DTMF is not delayed by the hold).
        let written = written.filter(|_| spec.peer_receives);
        let transmit = written.map(|len| {
            leg.tx_packets += 1;
            leg.tx_bytes += len as u64;
            leg.generated += 1;
            Transmit {
                slot,
                channel: Channel::Rtp,
                to,
                len,
            }
        });
        if let Some(kind) = done {
            self.report(slot, kind);
        }
        transmit
    }

    /// Sets the leg's next deadline from its state.
    fn schedule(&mut self, slot: usize, now: Instant) {
        let config = self.config;
        let Some(leg) = self.leg_mut(slot) else {
            return;
        };
        let mut next: Option<Instant> = leg.gen_next;
        let mut earliest = |at: Instant| {
            next = Some(next.map_or(at, |n| n.min(at)));
        };
        if let Some(session) = leg.dtls.as_ref() {
            if session.has_outgoing() {
                earliest(now);
            }
            if let Some(at) = session.poll_timeout() {
                earliest(at);
            }
        }
        if let Some(spec) = leg.spec {
            let reference = leg.rx_reference();
            if leg.expects_media() && !leg.quiet_reported {
                earliest(reference + config.quiet_after);
            }
            if spec.peer_sends
                && spec.watched
                && !leg.timed_out
                && let Some(limit) = config.inactivity
            {
                earliest(reference + limit);
            }
            if leg.gen_next.is_none() && leg.fillable() {
                earliest(leg.out.at.unwrap_or(leg.started) + config.fill_after);
            }
        }
        if let Some(at) = leg.cpa.as_ref().and_then(|t| t.next_tick()) {
            earliest(at);
        }
        let Some(mut at) = next else {
            return;
        };
        at = at.max(now);
        if leg.check_at.is_some_and(|c| c <= at) {
            return;
        }
        leg.check_at = Some(at);
        let generation = leg.generation;
        self.timers.push(Reverse((at, slot, generation)));
    }
}

/// What the DTMF generator of a leg did.
enum DtmfStep {
    /// A packet of this length is in the buffer.
    Packet(usize),
    /// An event ended; the next starts after a pause.
    Gap,
    /// Nothing is queued.
    Finished,
}

/// The next telephone-event packet of `leg`, written into `buf`.
fn next_dtmf_packet(leg: &mut Leg, now: Instant, frame: u32, pt: u8, buf: &mut [u8]) -> DtmfStep {
    let Leg { dtmf, out, .. } = leg;
    let Some(d) = dtmf.as_mut() else {
        return DtmfStep::Finished;
    };
    if d.current.is_none() {
        let Some(code) = d.queue.pop_front() else {
            return DtmfStep::Finished;
        };
        let step = u16::try_from(frame).unwrap_or(160);
        // An event's packets all carry the timestamp of its start.
        let ts = out.ts.wrapping_add(frame);
        d.current = Some((Generator::new(code, d.duration, step), ts));
    }
    let Some((generator, ts)) = d.current.as_mut() else {
        return DtmfStep::Finished;
    };
    let ts = *ts;
    let (head, body) = buf.split_at_mut(rtp::HEADER_LEN.min(buf.len()));
    match generator.next_packet(body) {
        Some(p) => {
            out.seq = out.seq.wrapping_add(1);
            out.at = Some(now);
            out.resync = true;
            let _ = rtp::write_header(head, p.marker, pt, out.seq, ts, out.ssrc);
            DtmfStep::Packet(rtp::HEADER_LEN + p.len)
        }
        None => {
            // What follows continues after the event's duration.
            out.ts = ts.wrapping_add(u32::from(d.duration));
            out.at = Some(now);
            out.marker = true;
            d.current = None;
            DtmfStep::Gap
        }
    }
}

/// A leg taken out of one shard's relay to be attached to another's.
#[derive(Debug)]
pub struct DetachedLeg(Box<Leg>);

impl DetachedLeg {
    /// The leg's id.
    pub fn id(&self) -> LegId {
        self.0.id
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
